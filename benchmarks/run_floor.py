"""The arithmetic floor of a finished `memdyn run`: the multiply-adds of every model pass, per
stage, against the stage times the run printed.

    memdyn run --workdir runs | tee run.log
    python benchmarks/run_floor.py --workdir runs --log run.log

Per stage: the multiply-adds (MACs) of the language models' and predictors' linear layers and
attention, counted from their configs and from the work directory's tables (how many samples,
revisions, decoding steps); the time they take at the machine's 2048-cube float32 matmul rate
(measured here, two threads, unless --rate is given), which no smaller matmul beats; and, with
--log, the time the stage took and the share of it that floor is. The count is a lower bound: it
leaves out the canaries' decoding steps and the predictors' baselines, and the corpus, tokenizer,
n-gram index, UMAP, figures and reports do no model arithmetic. Issue 15's budget is 8 minutes at
98 G MAC/s: what the arithmetic alone leaves of it tells whether the run must do less, not merely
run faster, to meet it.
"""

from __future__ import annotations

import argparse
import re
import sys
import timeit
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dynamics.errors import MemdynError  # noqa: E402
from dynamics.family.spec import load_family  # noqa: E402
from dynamics.files import read_json  # noqa: E402
from dynamics.workdir import Workdir  # noqa: E402

STAGES = ("family", "scores", "checkpoint scores", "dynamics", "predictor", "capacity", "membership", "analyses",
          "reports")


class LM:
    """Forward multiply-adds of a GPT-NeoX model from its config.json."""

    def __init__(self, config: Path):
        c = read_json(config)
        self.layers, self.d = c["num_hidden_layers"], c["hidden_size"]
        # per token: query/key/value, output projection, feed-forward, unembedding
        self.linear = self.layers * (4 * self.d * self.d + 2 * self.d * c["intermediate_size"]) + self.d * c["vocab_size"]

    def prompt(self, n: int, length: int) -> float:
        """n teacher-forced passes of `length` tokens (position t attends to t + 1 positions)."""
        return n * (length * self.linear + self.layers * self.d * length * (length + 1))

    def steps(self, positions: np.ndarray) -> float:
        """One decoding step at each of `positions` (attending to position + 1 keys)."""
        return float(len(positions) * self.linear + 2 * self.layers * self.d * (positions + 1).sum())


def decoding_positions(table: pd.DataFrame, C: int) -> np.ndarray:
    """Positions fed by the scorer's cached decoding: after a first mismatch at m < C - 1, the
    mismatching token at k + m and its successors, to k + C - 2 (dynamics/scoring/kernel.py); none
    for a longer matching prefix."""
    rows = table[table.continuation_len == C]
    k, m = rows.context_len.to_numpy(), rows.prefix_len.to_numpy()
    n = np.maximum(C - 1 - m, 0)
    start = np.repeat(k + m, n)
    return start + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)


def scoring_macs(directory: Path, models: dict[str, LM]) -> float:
    """A scores directory: one teacher-forced pass of max(context) + C tokens per (model, revision,
    sample), and the decoding steps its prefix lengths imply."""
    settings = read_json(directory / "_settings.json")
    T, C = max(settings["contexts"]) + max(settings["continuations"]), max(settings["continuations"])
    table = pd.read_parquet(directory, columns=["model", "revision", "seq_idx", "context_len", "continuation_len",
                                                 "prefix_len"])
    total = 0.0
    for (model, _), part in table.groupby(["model", "revision"]):
        total += models[model].prompt(part.seq_idx.nunique(), T) + models[model].steps(decoding_positions(part, C))
    return total


def predictor_macs(directory: Path) -> float:
    """Training passes of one cross-validated predictor: forward and backward, 3x the forward."""
    config, cv = read_json(directory / "config.json"), read_json(directory / "cv.json")
    p = config["predictor"]
    d = p["d_model"]
    T = config["context_len"] + (config["continuation_len"] if p["input"] == "hidden" else 0)
    per_token = p["n_layers"] * (12 * d * d + 2 * T * d) + d  # self-attention, feed-forward 4d, token head
    if p["input"] == "hidden":  # the hidden-state bottleneck and the channels
        width = p["n_features"] - p["n_channels"]
        per_token += width * p["hidden_proj"] + p["hidden_proj"] * d + p["n_channels"] * d
    return 3.0 * cv["cv"]["folds"] * p["members"] * config["train"]["epochs"] * cv["n_train"] * T * per_token


def unfinished(root: Path, missing) -> MemdynError:
    return MemdynError(f"{root} holds an unfinished run (no {missing}); finish it with `memdyn run` first")


def floor(root: Path) -> dict[str, float]:
    """MACs per stage of the run in work directory `root`; a stage's missing output raises
    FileNotFoundError, a missing family or reference model `unfinished`."""
    w = Workdir(root)
    if not (w.family_dir / "family.json").is_file():
        raise unfinished(root, w.family_dir / "family.json")
    family = load_family(str(w.family_dir))
    if not family.references:
        raise unfinished(root, "reference model: its capacity stage has not run")
    models = {s.name: LM(family.root / s.path / s.final / "config.json") for s in family.sizes}
    # the reference models: memdyn run's embedded world has one for every size, older families one per size
    refs = family.references
    reference = {size: LM(family.root / path / "config.json") for size, path in refs["sizes"].items()}
    distinct = {path: reference[size] for size, path in refs["sizes"].items()}.values()
    L, batch = family.data.seq_length, family.data.batch_size
    steps = read_json(w.family_dir / "family.json")["steps"]
    out = dict.fromkeys(STAGES, 0.0)
    out["family"] = 3 * sum(m.prompt(steps * batch, L) for m in models.values())
    out["scores"] = scoring_macs(w.scores_dir, models)
    out["checkpoint scores"] = scoring_macs(w.checkpoints_dir, models)
    dyn = read_json(w.dynamics_dir / "_settings.json")
    for name, m in models.items():  # one pass over context + greedy continuation per sequence
        n = len(pd.read_parquet(w.dynamics_dir / name / "sequences.parquet", columns=["seq_idx"]))
        out["dynamics"] += m.prompt(n, dyn["context_len"] + dyn["continuation_len"])
    out["predictor"] = sum(predictor_macs(d) for d in sorted(w.predictor_root.iterdir()) if (d / "cv.json").is_file())
    # each reference's one pass of training, then every member under its size and its reference
    members = pd.read_parquet(w.capacity_dir / "text_samples.parquet", columns=["model"]).model.value_counts()
    out["capacity"] = sum(3 * r.prompt(refs.get("steps", steps) * batch, L) for r in distinct)
    out["capacity"] += sum(models[m].prompt(n, L + 1) + reference[m].prompt(n, L + 1) for m, n in members.items())
    mia = read_json(w.membership_dir / "_settings.json")
    rows = pd.read_parquet(w.membership_dir / "attacks.parquet", columns=["model"]).model.value_counts()
    out["membership"] = sum(models[m].prompt(n, mia["length"]) for m, n in rows.items())
    out["membership"] += sum(r.prompt(2 * mia["n"], mia["length"]) for r in distinct)
    # per checkpoint: each canary scored and its log-probability taken, and each kind's candidates,
    # every one after the <|endoftext|> before it (candidates at least as long as the shortest canary)
    canaries = pd.read_parquet(w.root / "canaries", columns=["model", "revision", "kind", "length"])
    n_candidates = read_json(w.root / "canaries" / "_settings.json")["n_candidates"]
    for (name, _), g in canaries.groupby(["model", "revision"]):
        m = models[name]
        out["analyses"] += 2 * sum(m.prompt(1, n + 1) for n in g.length)
        out["analyses"] += g.kind.nunique() * m.prompt(n_candidates, int(g.length.min()) + 1)
    return out


def stage_times(log: Path) -> dict[str, float]:
    """Seconds per stage from the lines `memdyn run` printed: "[3/9] ...", then its jobs' and its
    own "... (66 s)" lines, its own the last."""
    times, current = {}, None
    for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        if (m := re.match(r"\[(\d+)/\d+\] ", line)):
            current = STAGES[int(m.group(1)) - 1]
        elif current and (m := re.match(r" +\S.*\((\d+) s\)$", line)):
            times[current] = float(m.group(1))
    return times


def matmul_rate(threads: int = 2) -> float:
    """G MAC/s of a 2048-cube float32 matmul, best of 10: the rate every time of the project is given with."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    best = min(timeit.repeat(lambda: a @ b, number=1, repeat=10))
    return 2048**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs"), help="work directory of a finished memdyn run")
    ap.add_argument("--log", type=Path, help="what that run printed (its stage times)")
    ap.add_argument("--rate", type=float, help="G MAC/s of the machine's 2048-cube matmul (default: measured now)")
    ap.add_argument("--budget", type=float, default=8.0, help="minutes at 98 G MAC/s the run should take")
    a = ap.parse_args()
    if not (a.workdir / "run.json").is_file():
        sys.exit(f"run_floor: {a.workdir} is not the work directory of a finished `memdyn run`; pass --workdir")
    if a.log is not None and not a.log.is_file():
        sys.exit(f"run_floor: no file {a.log}; pass --log with what `memdyn run` printed, or leave it out")
    if (a.rate is not None and a.rate <= 0) or a.budget <= 0:
        sys.exit("run_floor: --rate and --budget must be positive")
    try:
        macs = floor(a.workdir)
    except FileNotFoundError as e:
        sys.exit(f"run_floor: {unfinished(a.workdir, e.filename or e)}")  # (pyarrow names the path only in its message)
    except MemdynError as e:
        sys.exit(f"run_floor: {e}")
    rate = a.rate or matmul_rate()
    took = stage_times(a.log) if a.log else {}
    print(f"matmul rate {rate:.0f} G MAC/s (2048-cube float32, two threads)\n")
    print(f"{'stage':<18} {'T MAC':>7} {'floor s':>8} {'took s':>7} {'floor/took':>10}")
    for stage, n in macs.items():
        t = took.get(stage)
        print(f"{stage:<18} {n / 1e12:7.2f} {n / rate / 1e9:8.1f} {t if t is not None else float('nan'):7.0f} "
              f"{(n / rate / 1e9 / t) if t else float('nan'):10.0%}")
    total, spent = sum(macs.values()), sum(took.values())
    print(f"{'all':<18} {total / 1e12:7.2f} {total / rate / 1e9:8.1f} {spent if took else float('nan'):7.0f} "
          f"{(total / rate / 1e9 / spent) if spent else float('nan'):10.0%}")
    budget = a.budget * 60
    print(f"\nat 98 G MAC/s the arithmetic alone takes {total / 98e9:.0f} s of the {budget:.0f} s budget "
          f"({total / 98e9 / budget:.0%})" + (f"; the run took {spent * rate / 98:.0f} s scaled to 98 G MAC/s"
                                             if took else ""))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("run_floor: interrupted")
