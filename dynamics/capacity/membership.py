"""Membership inference by loss threshold, and the sigmoid scaling law of its F1.

The attack: a sample is called a member when its loss is below a threshold (members were
trained on, so the model is more confident on them). Two honest numbers come out:
- `auroc`: threshold-free, roc_auc_score on the negated losses.
- `f1`: the threshold is chosen on one random half of members and non-members (best F1 there)
  and F1 is evaluated on the other half, then the halves swap and the two F1s are averaged.
  `f1_oracle` (best threshold chosen and scored on all samples) is reported alongside; it is
  optimistic by construction, never below `f1` in expectation.
  With no signal the best-F1 rule is "everyone is a member": F1 = 2/3 at balanced classes.
- `f1_median`: threshold = median of all losses (half the samples called members), nothing
  fitted. With no signal F1 = 1/2, the floor of the paper's scaling law, so this is the F1
  to compare with Morris et al. and the one the sigmoid is fitted to by default.

Scaling law (Morris et al. 2025, shared/REFERENCE.md section 3): F1 falls from 1 to 1/2 as
training data per parameter grows. We fit
    F1(x) = 0.5 * (1 + c1 * sigmoid(c2 * x + c3)),   x = log10(tokens per parameter)
(c2 < 0: more data per parameter, weaker attack).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamics.errors import MemdynError

# Morris et al. 2025 validation rows (shared/REFERENCE.md section 3):
# (parameters, |D| samples of 64 tokens, observed loss-attack F1).
PAPER_SEQ_LEN = 64
PAPER_VALIDATION_ROWS = [
    (1_556_075_200, 170_654_583, 0.546),
    (1_556_075_200, 76_795_021, 0.711),
    (1_556_075_200, 18_851_574, 0.959),
    (123_702_528, 13_566_442, 0.534),
    (123_702_528, 1_498_634, 0.980),
]


def best_threshold_f1(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds 'loss <= t means member' -> (f1, t). Exact, O(n log n)."""
    m = np.asarray(member_losses, dtype=np.float64)
    n = np.asarray(nonmember_losses, dtype=np.float64)
    losses = np.concatenate([m, n])  # (M+K,)
    is_member = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    order = np.argsort(losses, kind="stable")
    losses, is_member = losses[order], is_member[order]
    tp = np.cumsum(is_member)  # predicting the first i+1 sorted samples as members
    fp = np.cumsum(1 - is_member)
    # only cut between distinct loss values: tied samples must land on the same side
    last_of_run = np.r_[losses[1:] != losses[:-1], True]
    tp, fp = tp[last_of_run], fp[last_of_run]
    cuts = losses[last_of_run]
    f1 = 2 * tp / (2 * tp + fp + (len(m) - tp))  # 2TP / (2TP + FP + FN)
    i = int(np.argmax(f1))
    # threshold midway to the next distinct loss: the same F1 here, a margin for unseen samples
    t = cuts[i] if i + 1 == len(cuts) else 0.5 * (cuts[i] + cuts[i + 1])
    return float(f1[i]), float(t)


def f1_at_threshold(member_losses: np.ndarray, nonmember_losses: np.ndarray, threshold: float) -> float:
    tp = float(np.sum(np.asarray(member_losses) <= threshold))
    fp = float(np.sum(np.asarray(nonmember_losses) <= threshold))
    fn = len(member_losses) - tp
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@dataclass
class AttackResult:
    f1: float  # threshold chosen on one half, scored on the other (2-fold, averaged)
    f1_oracle: float  # threshold chosen and scored on everything (optimistic)
    f1_median: float  # threshold at the pooled median: half called members (paper-comparable)
    auroc: float
    threshold: float  # the oracle threshold, in the unit of the losses given
    n_members: int
    n_nonmembers: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def loss_threshold_attack(member_losses, nonmember_losses, seed: int = 0) -> AttackResult:
    """Loss-threshold membership inference: members are expected to have lower loss.

    member_losses (M,), nonmember_losses (K,): per-sample losses (any unit, e.g. NLL bits).
    """
    from sklearn.metrics import roc_auc_score

    m = np.asarray(member_losses, dtype=np.float64)
    n = np.asarray(nonmember_losses, dtype=np.float64)
    if len(m) < 2 or len(n) < 2:
        raise ValueError("membership inference needs at least 2 members and 2 non-members")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    auroc = float(roc_auc_score(y, -np.r_[m, n]))  # low loss = member
    f1_oracle, threshold = best_threshold_f1(m, n)
    f1_median = f1_at_threshold(m, n, float(np.median(np.r_[m, n])))

    # 2-fold: split each class in halves; choose the threshold on one, score on the other
    rng = np.random.default_rng(seed)
    pm, pn = rng.permutation(len(m)), rng.permutation(len(n))
    halves = [(pm[: len(m) // 2], pn[: len(n) // 2]), (pm[len(m) // 2:], pn[len(n) // 2:])]
    f1s = []
    for fit, ev in [(0, 1), (1, 0)]:
        _, t = best_threshold_f1(m[halves[fit][0]], n[halves[fit][1]])
        f1s.append(f1_at_threshold(m[halves[ev][0]], n[halves[ev][1]], t))
    return AttackResult(float(np.mean(f1s)), f1_oracle, f1_median, auroc, threshold, len(m), len(n))


# ---------------------------------------------------------------------------------------------
# the sigmoid scaling law


def sigmoid_f1(x, c1, c2, c3):
    """F1 = 0.5 * (1 + c1 * sigmoid(c2 * x + c3)); x = log10(tokens per parameter)."""
    from scipy.special import expit  # overflow-free logistic

    return 0.5 * (1.0 + c1 * expit(c2 * np.asarray(x, dtype=np.float64) + c3))


@dataclass
class SigmoidFit:
    c1: float
    c2: float
    c3: float
    rmse: float
    n_points: int
    x: str = "log10(tokens per parameter)"

    def predict(self, tokens_per_param) -> np.ndarray:
        return sigmoid_f1(np.log10(np.asarray(tokens_per_param, dtype=np.float64)), self.c1, self.c2, self.c3)

    def tokens_per_param_at(self, f1: float) -> float:
        """Inverse: the tokens per parameter at which the fitted F1 equals f1."""
        s = (2 * f1 - 1) / self.c1
        if not 0 < s < 1:
            raise ValueError(f"F1 {f1} is outside the fitted curve's range")
        return 10 ** ((math.log(s / (1 - s)) - self.c3) / self.c2)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fit_sigmoid(tokens_per_param, f1, p0=(1.0, -3.0, 3.0), fix_c1: float | None = None) -> SigmoidFit:
    """Least-squares fit of sigmoid_f1 to (tokens per parameter, F1) points.

    Deterministic (no random restarts); a small grid of starting points guards against a bad
    local minimum. fix_c1 pins c1 (useful with few points: the paper's curve starts at F1=1,
    i.e. c1=1). With fewer points than free constants the fit is exact but not identified.
    """
    from scipy.optimize import curve_fit

    x = np.log10(np.asarray(tokens_per_param, dtype=np.float64))
    y = np.asarray(f1, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("the sigmoid fit needs at least 2 points")
    if fix_c1 is None:
        f, bounds = sigmoid_f1, ([0.0, -np.inf, -np.inf], [2.0, np.inf, np.inf])
    else:
        f = lambda x, c2, c3: sigmoid_f1(x, fix_c1, c2, c3)  # noqa: E731
        bounds = ([-np.inf, -np.inf], [np.inf, np.inf])
    best = None
    for c2 in (p0[1], -1.0, -10.0):
        for c3 in (p0[2], 0.0, 10.0):
            start = [p0[0], c2, -c2 * np.median(x) if c3 == 0.0 else c3]
            if fix_c1 is not None:
                start = start[1:]
            try:
                with warnings.catch_warnings():  # few points: covariance is often undefined
                    warnings.simplefilter("ignore")
                    popt, _ = curve_fit(f, x, y, p0=start, bounds=bounds, maxfev=20000)
            except RuntimeError:  # no convergence from this start
                continue
            sse = float(np.sum((f(x, *popt) - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, popt)
    if best is None:
        raise RuntimeError("sigmoid fit did not converge from any starting point")
    sse, popt = best
    c1, c2, c3 = (popt if fix_c1 is None else (fix_c1, *popt))
    return SigmoidFit(float(c1), float(c2), float(c3), math.sqrt(sse / len(x)), len(x))


def fit_paper_rows(rows=PAPER_VALIDATION_ROWS, seq_len: int = PAPER_SEQ_LEN, fix_c1: float | None = None) -> SigmoidFit:
    """Fit the sigmoid to the paper's validation table (params, |D| samples, F1)."""
    tpp, f1 = paper_points(rows, seq_len)
    return fit_sigmoid(tpp, f1, fix_c1=fix_c1)


def plot_sigmoid_fit(tokens_per_param, f1, fit: SigmoidFit, path_stem, title: str = "", labels=None):
    """Points and fitted curve; writes <path_stem>.png and .svg atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tpp = np.asarray(tokens_per_param, dtype=np.float64)
    lo, hi = np.log10(tpp.min()) - 0.5, np.log10(tpp.max()) + 0.5
    grid = np.logspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(tpp, f1, s=18, c="C0", label="observed", zorder=3)
    if labels is not None:
        for x, y, s in zip(tpp, f1, labels):
            ax.annotate(str(s), (x, y), fontsize=6, alpha=0.7)
    ax.plot(grid, fit.predict(grid), c="C1",
            label=f"fit: c1={fit.c1:.3f} c2={fit.c2:.3f} c3={fit.c3:.3f}")
    ax.axhline(0.5, c="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per parameter")
    ax.set_ylabel("loss-threshold attack F1")
    ax.set_ylim(0.4, 1.05)
    ax.set_title(title or "Membership inference F1 vs data per parameter")
    ax.legend(fontsize=7)
    fig.tight_layout()
    from dynamics.decoding.plots import save

    save(fig, path_stem)
    plt.close(fig)


def paper_points(rows=PAPER_VALIDATION_ROWS, seq_len: int = PAPER_SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """(tokens per parameter, F1) of the paper's validation rows."""
    tpp = np.array([r[1] * seq_len / r[0] for r in rows], dtype=np.float64)
    return tpp, np.array([r[2] for r in rows], dtype=np.float64)


def fit_from_table(path, f1_column: str = "f1_median") -> tuple[SigmoidFit, np.ndarray, np.ndarray]:
    """Fit the sigmoid to a synthetic sweep table (columns tokens_per_param and f1)."""
    import pandas as pd

    try:
        t = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's errors for garbage or truncated files are these
        raise MemdynError(f"--table {path} is not a readable Parquet table ({str(e).splitlines()[0]}); "
                          "give the capacity.parquet of `memdyn capacity synthetic`") from None
    missing = {"tokens_per_param", f1_column} - set(t.columns)
    if missing:
        raise MemdynError(f"--table {path} has no column {', '.join(sorted(missing))}; give the capacity.parquet of "
                          "`memdyn capacity synthetic`")
    tpp, f1 = t["tokens_per_param"].to_numpy(), t[f1_column].to_numpy()
    return fit_sigmoid(tpp, f1), tpp, f1


def write_mi_law(out: str | Path, table: str | Path | None = None) -> "SigmoidFit":
    """`memdyn capacity mi-law`: the sigmoid fitted to the paper's validation rows (or to a synthetic
    sweep's capacity.parquet), as OUT/mi_law.json and its figure OUT/mi_law.{png,svg}."""
    from dynamics.files import check_output_folder, write_json
    from dynamics.lock import output_lock

    out = Path(out)
    check_output_folder(out, "--out", lambda p: (p / "mi_law.json").is_file())
    if table is None:
        fit = fit_paper_rows()
        tpp, f1 = paper_points()
        title = "Morris et al. 2025 validation rows (loss-attack F1)"
    else:
        table = Path(table)
        if not table.exists():
            raise MemdynError(f"table {table} does not exist; run `memdyn capacity synthetic` first")
        fit, tpp, f1 = fit_from_table(table)
        title = f"Loss-threshold MI, {table.parent.name}"
    with output_lock(out):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "mi_law.json", fit.as_dict())
        plot_sigmoid_fit(tpp, f1, fit, out / "mi_law", title=title)
    return fit
