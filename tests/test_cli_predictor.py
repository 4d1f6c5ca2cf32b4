"""Bad inputs of `memdyn predictor train / eval / predict`, damaged predictor directories, and a
predictor fit that resumes from its last epoch checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.test_cli_score import one_line_error


# 37k at context 16 / continuation 4 has all three classes (tests/test_predictor.py); half the
# documents held out, so the micro world's test split holds memorized samples too
CELL = ["--context", "16", "--continuation", "4", "--test-size", "0.5", "--d-model", "16", "--encoder-layers", "1",
        "--heads", "2"]


@pytest.fixture(scope="module")
def largest():
    return "37k"


def train(family, scores, model, out, *extra):
    return run_cli("predictor", "train", "--family", family, "--scores", scores, "--model", model, "--out", out,
                   "--epochs", "2", *CELL, *extra)


@pytest.fixture(scope="module")
def predictor_dir(micro_family, micro_scores, largest, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "pred"
    code, _, err = train(micro_family, micro_scores, largest, out)
    assert code == 0, err
    return out


@pytest.mark.parametrize("args,words", [
    (["--seed", "-1"], ["--seed"]),
    (["--lr", "-1"], ["--lr"]),
    (["--lr", "0"], ["--lr"]),
    (["--test-size", "1.5"], ["--test-size"]),
    (["--test-size", "0"], ["--test-size"]),
    (["--batch-size", "abc"], ["--batch-size"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--folds", "1"], ["--folds"]),
    (["--folds", "-2"], ["--folds"]),
    (["--heads", "3"], ["--heads"]),
    (["--positional", "spiral"], ["spiral"]),
    (["--input", "telepathy"], ["telepathy"]),
    (["--input", "hidden"], ["--dynamics"]),
    (["--edges", "0.9,0.1"], ["--edges"]),
])
def test_bad_train_options_before_any_file(micro_family, micro_scores, largest, tmp_path, args, words):
    code, _, err = train(micro_family, micro_scores, largest, tmp_path / "pred", *args)
    one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_file_or_foreign_directory_before_training(micro_family, micro_scores, largest, tmp_path):
    (tmp_path / "file").write_text("mine")
    code, _, err = train(micro_family, micro_scores, largest, tmp_path / "file")
    one_line_error(code, err, "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    code, _, err = train(micro_family, micro_scores, largest, tmp_path / "pred", "--model", "nope")
    one_line_error(code, err, "nope")


def test_eval_json_refuses_foreign_outputs(predictor_dir, micro_scores, tmp_path):
    (tmp_path / "notes.json").write_text('{"mine": 1}\n')
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "thesis.tex").write_text("years of work")
    for out in (tmp_path / "notes.json", tmp_path / "dir"):
        code, _, err = run_cli("predictor", "eval", "--model-dir", predictor_dir, "--scores", micro_scores, "--json", out)
        one_line_error(code, err, "--json")
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}\n' and (tmp_path / "dir" / "thesis.tex").is_file()


def test_damaged_predictor_directories(predictor_dir, micro_scores, tmp_path):
    cases = {
        "truncated config.json": lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:40]),
        "missing tokenizer file": lambda d: next((d / "tokenizer").iterdir()).unlink(),
        "altered weights": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"),
        "extra file": lambda d: (d / "stray.bin").write_bytes(b"x"),
    }
    for i, (case, damage) in enumerate(cases.items()):
        d = tmp_path / f"p{i}"
        shutil.copytree(predictor_dir, d)
        damage(d)
        for cmd in (["eval", "--model-dir", d, "--scores", micro_scores], ["predict", "--model-dir", d, "--text", "def f():"]):
            code, _, err = run_cli("predictor", *cmd)
            one_line_error(code, err, str(d))


def test_predict_bad_inputs(predictor_dir, tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "zeros.bin").write_bytes(b"\0" * 100)
    for args, words in (
        (["--file", tmp_path / "blob.bin"], ["UTF-8"]),
        (["--file", tmp_path / "zeros.bin"], ["binary"]),
        (["--file", tmp_path / "none.txt"], ["no such file"]),
        (["--text", "x", "--file", tmp_path / "blob.bin"], ["either"]),
        ([], ["either"]),
    ):
        code, _, err = run_cli("predictor", "predict", "--model-dir", predictor_dir, *args)
        one_line_error(code, err, *words)
    code, _, err = run_cli("predictor", "predict", "--model-dir", tmp_path, "--text", "x")
    one_line_error(code, err, str(tmp_path))
    code, out, err = run_cli("predictor", "predict", "--model-dir", predictor_dir, "--text", "def f(x):\n    return x")
    assert code == 0, err


def test_fit_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    from predictor import estimator
    from predictor.estimator import MemorizationPredictor

    rng = np.random.default_rng(0)
    X, y = rng.integers(2, 50, size=(40, 12)), rng.integers(0, 3, size=40)
    score = rng.random(40).astype(np.float32)

    def fit(checkpoint_dir=None):
        est = MemorizationPredictor(epochs=5, batch_size=8, seed=1, members=2, d_model=16, n_layers=1,
                                    checkpoint_dir=checkpoint_dir)
        return est.fit(X, y, score=score, vocab_size=50)

    reference = fit()
    saved, real = [], estimator._save_checkpoint

    class Killed(Exception):
        pass

    def dying(path, epochs_done, *a):
        real(path, epochs_done, *a)
        saved.append(epochs_done)
        if len(saved) == 8:  # second member, after its third epoch
            raise Killed

    monkeypatch.setattr(estimator, "_save_checkpoint", dying)
    with pytest.raises(Killed):
        fit(tmp_path)
    saved.clear()
    resumed = fit(tmp_path)
    assert saved == [4, 5]  # the finished member is not retrained, the second goes on from its third epoch
    assert resumed.loss_history_ == reference.loss_history_
    for (k, v), w in zip(reference.net_.state_dict().items(), resumed.net_.state_dict().values()):
        assert torch.equal(v, w), k
    json.dumps(resumed.get_params())  # the checkpoint directory is no hyperparameter
    assert "checkpoint_dir" not in resumed.get_params()
