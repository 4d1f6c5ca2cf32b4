import numpy as np
import pandas as pd
import pytest

from dynamics.capacity.text import text_capacity, unigram_bits_per_token
from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.data import TrainingData
from dynamics.family.spec import load_family
from dynamics.files import read_json
from tests.conftest import run_cli


def test_reference_models_never_see_the_members(micro_workdir):
    micro_family = micro_workdir / "family"  # `memdyn run` trained its reference models
    family = load_family(micro_family)
    members = read_json(micro_family / "data" / "reference.json")["members"]
    train = IndexedDataset(family.data.prefix).batch(0, len(IndexedDataset(family.data.prefix)))
    reference = IndexedDataset(micro_family / "data" / "reference")
    ref_rows = {tuple(row) for row in reference.batch(0, len(reference)).tolist()}
    assert members and not any(tuple(train[m].tolist()) in ref_rows for m in members)
    assert set(family.references["sizes"]) == set(family.size_names)


def test_text_capacity_on_micro(micro_family, micro_workdir):
    """`memdyn run` wrote the capacity tables; the numbers obey their definitions."""
    table = pd.read_parquet(micro_workdir / "capacity" / "text_capacity.parquet")
    samples = pd.read_parquet(micro_workdir / "capacity" / "text_samples.parquet")
    family = load_family(micro_family)
    assert list(table.model) == family.size_names
    assert (samples.unintended_bits >= 0).all() and (samples.generalization_bits >= 0).all()
    np.testing.assert_allclose(samples.unintended_bits, np.maximum(0, samples.bits_reference - samples.bits_target))
    n_train = len(IndexedDataset(family.data.prefix))
    np.testing.assert_allclose(table.bits_memorized, table.unintended_bits_per_sample * n_train)
    np.testing.assert_allclose(table.bits_per_param, table.bits_memorized / table.params)
    # the largest micro model memorizes most of its samples verbatim: it stores more bits than the smallest
    assert table.bits_memorized.iloc[-1] > table.bits_memorized.iloc[0]
    assert ((table.mi_auroc >= 0) & (table.mi_auroc <= 1)).all()
    # the attack sets the members that hold no canary copy against as many held-out samples
    data = micro_workdir / "family" / "data"
    canary_free = len(np.setdiff1d(read_json(data / "reference.json")["members"], TrainingData(str(data / "train")).canary_samples))
    held = min(canary_free, len(IndexedDataset(data / "heldout")))
    assert 0 < canary_free < table.n_members.iloc[0]
    assert (table.mi_members == canary_free).all() and (table.n_heldout == held).all()
    assert (micro_workdir / "capacity" / "membership_sigmoid.png").is_file()


def test_unigram_baseline_is_a_code_length():
    bits = unigram_bits_per_token(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(2.0 ** -bits, [4 / 7, 2 / 7, 1 / 7])


def test_capacity_bad_inputs(micro_family, micro_workdir, tmp_path):
    from transformers import AutoTokenizer

    from dynamics.corpus.tokenizer import train_tokenizer

    train_tokenizer(["another corpus entirely " * 50], 300, tmp_path / "tok")
    other = tmp_path / "other_ref"
    with_refs = micro_workdir / "family"
    ref = with_refs / load_family(with_refs).references["sizes"][load_family(with_refs).size_names[0]]
    import shutil

    shutil.copytree(ref, other)
    AutoTokenizer.from_pretrained(tmp_path / "tok").save_pretrained(other)
    with pytest.raises(MemdynError, match="another tokenizer"):
        text_capacity(load_family(with_refs), tmp_path / "c", models=load_family(with_refs).size_names[:1],
                      reference=str(other), device="cpu")
    with pytest.raises(MemdynError, match="memdyn family references"):
        text_capacity(load_family(micro_family), tmp_path / "c", device="cpu")  # the bare family has none
    code, _, err = run_cli("capacity", "text", "--family", with_refs, "--out", tmp_path / "c", "--dtype", "fp16", "--device", "cpu")
    assert code == 2 and "fp16 is not supported on the CPU" in err
    assert not (tmp_path / "c" / "text_capacity.parquet").exists()


def test_capacity_killed_before_its_last_file_is_computed_again(micro_workdir, tmp_path, monkeypatch):
    """A run killed while the figure was being drawn must not pass as finished (CI once resumed a
    `memdyn run` killed there and got a capacity directory without its membership figure)."""
    import dynamics.capacity.text as T

    family = load_family(micro_workdir / "family")
    out = tmp_path / "c"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "plot_sigmoid_fit", killed)
    with pytest.raises(KeyboardInterrupt):
        text_capacity(family, out, models=family.size_names[:2], device="cpu", progress=False)
    assert (out / "text_capacity.parquet").is_file() and not T.computed_from(out, family)
    monkeypatch.undo()
    text_capacity(family, out, models=family.size_names[:2], device="cpu", progress=False)
    assert T.computed_from(out, family) and (out / "membership_sigmoid.png").is_file()
