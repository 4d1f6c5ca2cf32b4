"""Bad inputs of `memdyn capacity synthetic / mi-law / text`, and a capacity job that resumes from
its last checkpoint with the result of an uninterrupted one."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dynamics.capacity import saturation, synthetic
from tests.conftest import run_cli
from tests.test_cli_score import one_line_error

TINY = synthetic.SweepConfig(
    name="tiny-test", vocab_size=8, seq_len=6, models=((1, 8),), data_fractions=(1.0,), head_dim=4, lr=3e-2,
    warmup_steps=5, max_steps=60, eval_every=10, plateau_evals=3, lr_decays=1, n_nonmembers=20, batch_size=4,
)


def _foreign(path):
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


@pytest.mark.parametrize("args,words", [
    (["--threads", "-1"], ["--threads"]),
    (["--seed", "-1"], ["--seed"]),
    (["--dtype", "fp16"], ["fp16"]),
    (["--dtype", "int8"], ["int8"]),
    (["--preset", "huge"], ["huge"]),
])
def test_bad_synthetic_options_leave_nothing(tmp_path, args, words):
    code, _, err = run_cli("capacity", "synthetic", "--preset", "smoke", "--out", tmp_path / "cap", *args)
    one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_refuses_foreign_outputs(tmp_path):
    (tmp_path / "file").write_text("mine")
    for out, words in ((tmp_path / "file", ["is a file"]), (_foreign(tmp_path / "dir"), ["not empty"])):
        code, _, err = run_cli("capacity", "synthetic", "--preset", "smoke", "--out", out)
        one_line_error(code, err, *words)
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "dir" / "thesis.tex").is_file()


def test_mi_law_bad_table_and_foreign_out(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    code, _, err = run_cli("capacity", "mi-law", "--out", tmp_path / "law", "--table", garbage)
    one_line_error(code, err, "--table", "Parquet")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    code, _, err = run_cli("capacity", "mi-law", "--out", tmp_path / "law", "--table", other)
    one_line_error(code, err, "tokens_per_param")
    code, _, err = run_cli("capacity", "mi-law", "--out", _foreign(tmp_path / "dir"))
    one_line_error(code, err, "--out", "did not write")
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["thesis.tex"]
    for _ in range(2):  # its own output is replaced
        code, _, err = run_cli("capacity", "mi-law", "--out", tmp_path / "law")
        assert code == 0, err


def test_text_refuses_foreign_out_and_bad_options(micro_family, tmp_path):
    code, _, err = run_cli("capacity", "text", "--family", micro_family, "--out", _foreign(tmp_path / "dir"))
    one_line_error(code, err, "--out", "did not write")
    code, _, err = run_cli("capacity", "text", "--family", micro_family, "--out", tmp_path / "t", "--batch-size", "0")
    one_line_error(code, err, "--batch-size")
    code, _, err = run_cli("capacity", "text", "--family", micro_family, "--out", tmp_path / "t", "--dtype", "fp16")
    one_line_error(code, err, "fp16")
    assert not (tmp_path / "t").exists()


class Killed(Exception):
    pass


def _train(checkpoint, kill_at=None):
    job = TINY.jobs()[0]
    data = synthetic.random_tokens(job.n_samples, TINY.seq_len, TINY.vocab_size, 1)
    model = synthetic.make_model(TINY, job.n_layer, job.d_model, 2)

    def progress(step, bits, lr):
        if step == kill_at:
            raise Killed

    result = saturation.train_to_saturation(model, data, TINY, 3, TINY.bits_per_sample(), progress, checkpoint)
    return result, model.state_dict()


def test_capacity_job_resumes_from_its_last_checkpoint(tmp_path):
    reference, weights = _train(None)
    assert reference.steps > 30  # long enough that the kill lands mid-training
    ckpt = tmp_path / "job.resume.pt"
    with pytest.raises(Killed):
        _train(ckpt, kill_at=30)  # dies after the evaluation at step 30, before its checkpoint
    assert torch.load(ckpt, weights_only=False)["step"] == 20
    resumed, resumed_weights = _train(ckpt)
    assert resumed.curve == reference.curve and resumed.steps == reference.steps
    for k, v in weights.items():
        assert torch.equal(v, resumed_weights[k]), k
