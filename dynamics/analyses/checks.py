"""The published trends as checks on a finished work directory (benchmarks/validate_findings.py
prints them). Each check is (name, numbers, status, why): status PASS when the 95% bootstrap
interval of the tested difference lies on the published side of zero (intervals over training
samples resample the documents the samples start in, dynamics.bootstrap), FAIL when it does not (why
says whether the trend is reversed or only not shown at 95%), NOT SHOWN only when the data is not
there at all (a stage not run, a group with no sequence). Seeded: the same directory gives the
same lines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynamics.bootstrap import N_RESAMPLES, mean_ci, resample_counts
from dynamics.workdir import Workdir

Check = tuple[str, str, str, str]


def paired_diff(a, b, seed: int, n_resamples: int = N_RESAMPLES, groups=None) -> tuple[float, float, float]:
    """mean(b - a) over paired observations and its percentile 95% interval, resampling the pairs
    or their groups (a label per pair: its document)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) == 0:
        return np.nan, np.nan, np.nan
    return mean_ci(d, seed, n_resamples, groups)[1:]


def documents(run: Workdir, seq_idx) -> np.ndarray:
    """The document each training sample starts in: the unit the intervals resample."""
    from dynamics.family.data import training_data

    return training_data(run.family).documents(seq_idx)


def directional(d: float, lo: float, hi: float, rising: bool = True) -> tuple[str, str]:
    """PASS when the interval excludes zero on the expected side."""
    if not np.isfinite(d):
        return "NOT SHOWN", "no data on one side of the comparison"
    if (lo > 0) if rising else (hi < 0):
        return "PASS", ""
    if (hi < 0) if rising else (lo > 0):
        return "FAIL", "the opposite trend, beyond its 95% interval"
    return "FAIL", "the interval includes 0: the trend is not shown at 95% (too few samples or too weak an effect)"


def fmt(d: float, lo: float, hi: float, unit: str = "", scale: float = 1.0, digits: str = "+.3g") -> str:
    return f"{d * scale:{digits}}{unit} (95% CI {lo * scale:{digits}} to {hi * scale:{digits}}{unit})"


def memorized(table: pd.DataFrame, **eq) -> pd.Series:
    """seq_idx -> 1.0 if memorized (score 1) in the rows matching eq."""
    for col, value in eq.items():
        table = table[table[col] == value]
    return (table.set_index("seq_idx")["score"] >= 1).astype(float).sort_index()


def share_checks(run: Workdir, seed: int) -> list[Check]:
    """Size, context and continuation trends of the memorized share, paired over samples (their
    documents resampled)."""
    k, c = run.cell
    s = run.scores
    out = []
    per = {m: memorized(s, model=m, context_len=k, continuation_len=c) for m in run.sizes}
    nums = ", ".join(f"{m} {100 * v.mean():.3g}%" for m, v in per.items())
    a, b = per[run.sizes[0]], per[run.sizes[-1]]
    both = a.index.intersection(b.index)
    docs = documents(run, both)
    d = paired_diff(a.loc[both], b.loc[both], seed, groups=docs)
    out.append(("memorized share rises with model size", f"context {k} / continuation {c}: {nums}; {run.sizes[-1]} - "
                f"{run.sizes[0]} = {fmt(*d, ' pts', 100)}, {len(both)} samples from {len(np.unique(docs))} documents",
                *directional(*d)))
    for axis, fixed, value, rising in (("context_len", "continuation_len", c, True), ("continuation_len", "context_len", k, False)):
        values = sorted(s[axis].unique())
        for m in run.sizes:
            shares = {v: memorized(s, model=m, **{axis: v, fixed: value}) for v in values}
            lo_v, hi_v = values[0], values[-1]
            both = shares[lo_v].index.intersection(shares[hi_v].index)
            d = paired_diff(shares[lo_v].loc[both], shares[hi_v].loc[both], seed, groups=documents(run, both))
            name = axis.split("_")[0]
            nums = ", ".join(f"{name} {v}: {100 * x.mean():.3g}%" for v, x in shares.items())
            out.append((f"memorized share {'rises' if rising else 'falls'} with {name} length ({m})",
                        f"{fixed.split('_')[0]} {value}: {nums}; {hi_v} - {lo_v}: {fmt(*d, ' pts', 100)}", *directional(*d, rising)))
    return out


def jump_checks(run: Workdir, metric: str, up_group: str, rising: bool, label: str, unit: str) -> list[Check]:
    """A jump at the boundary for unmemorized samples (up when rising, else a drop), and none in
    that direction for memorized ones, per size, from the dynamics stage's bootstrap intervals."""
    from dynamics.report import findings as F

    j = F.jump_rows(run.dynamics_table("jumps"), metric)
    out = []
    for m in run.sizes:
        own = j[j["model"] == m].set_index("group")
        for group in ("unmemorized", "memorized"):
            expect = group == "unmemorized"
            verb = ("jumps up" if rising else "drops") if expect else ("does not jump up" if rising else "does not drop")
            name = f"{label} {verb} at the boundary for {group} samples ({m})"
            if group not in own.index or own.loc[group, "n"] < 2:
                n = 0 if group not in own.index else int(own.loc[group, "n"])
                out.append((name, f"n={n}", "NOT SHOWN", f"{n} {group} sequences collected: the size memorizes too few "
                            "(or too many) samples to form the group"))
                continue
            r = own.loc[group]
            docs = f" from {int(r.documents)} documents" if "documents" in r else ""  # (older tables: sequences resampled)
            nums = f"jump {fmt(r.jump, r.ci_lo, r.ci_hi, unit)}, n={int(r.n)}{docs}"
            if expect:
                status, why = directional(r.jump, r.ci_lo, r.ci_hi, rising)
            else:
                shown = r.ci_lo > 0 if rising else r.ci_hi < 0
                status, why = ("FAIL", f"memorized samples {'jump up' if rising else 'drop'} too, beyond the 95% interval") \
                    if shown else ("PASS", "")
            out.append((name, nums, status, why))
    return out


def separation_checks(run: Workdir, seed: int, n_resamples: int = 200) -> list[Check]:
    """Silhouette of memorized vs unmemorized last-layer states (mean over decoding steps), largest
    minus smallest size, with a bootstrap over the documents the sequences start in."""
    from sklearn.metrics import silhouette_score

    from dynamics.decoding.boundary import resampling_units
    from dynamics.decoding.store import read_hidden, read_model
    from dynamics.decoding.embeddings import step_summaries

    name = "memorized and unmemorized hidden states separate more with size"
    rng = np.random.default_rng(seed)
    sil, boots = {}, {}
    for m in run.sizes:
        try:
            meta, seqs, _ = read_model(run.dynamics_dir, m)
            layer = max(int(v) for v in meta.get("layers", [])) if meta.get("layers") else None
            hidden = read_hidden(run.dynamics_dir, m, layer)
        except Exception as e:  # no states collected for this size
            return [(name, "-", "NOT SHOWN", f"no hidden states for {m} ({e})")]
        k, c = int(meta["context_len"]), int(meta["continuation_len"])
        matches = seqs["matches"].to_numpy()
        states, _, _ = step_summaries(hidden, matches, k, c)
        keep = np.isin(matches, [0, c])
        x, y = states[keep], matches[keep] == c
        units = resampling_units(seqs)[keep]
        if y.sum() < 2 or (~y).sum() < 2:
            return [(name, f"{m}: {int(y.sum())} memorized, {int((~y).sum())} unmemorized", "NOT SHOWN",
                     f"{m} has fewer than 2 sequences in a class")]
        sil[m] = float(silhouette_score(x, y))
        draws = (np.repeat(np.arange(len(y)), w) for w in resample_counts(rng, n_resamples, len(y), units))
        boots[m] = np.array([silhouette_score(x[i], y[i]) for i in draws if 0 < y[i].sum() < len(i)])
    a, b = run.sizes[0], run.sizes[-1]
    r = min(len(boots[a]), len(boots[b]))  # (a resample of documents holding one class has no silhouette)
    diff = boots[b][:r] - boots[a][:r]
    d = (sil[b] - sil[a], float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975)))
    nums = ", ".join(f"{m} {v:.3f}" for m, v in sil.items())
    status, why = directional(*d)
    if status == "FAIL":  # other measures of the same states beside the failed one
        for label, values in (("the held-out balanced accuracy of a linear probe on the same states", _probe_accuracies(run)),
                              ("Chen et al.'s measure, the cosine distance between the memorized and unmemorized mean "
                               "states (mean over decoding steps)", _mean_state_cosine(run, c))):
            if values:
                why += f"; {label}: " + ", ".join(f"{m} {v:.3f}" for m, v in values.items())
        rates = run.family.peak_rates()
        if len(set(rates.values())) > 1:  # the separation follows the rate (benchmarks/FINDINGS.md)
            why += ("; the sizes trained at peak learning rates " + ", ".join(f"{m} {r:g}" for m, r in rates.items())
                    + ", and a higher rate separates more at the same size (`memdyn run --lr` trains every size at one)")
    return [(name, f"silhouette (last layer): {nums}; {b} - {a} = {fmt(*d)}", status, why)]


def _last_layer(run: Workdir, table: str, rows, column: str, how: str) -> dict[str, float]:
    """Per size, `column` of the dynamics `table`'s `rows` at the size's last layer, reduced by
    `how`; {} unless every size has a finite value."""
    t = run.dynamics_table(table)
    if t.empty:
        return {}
    t = t[rows(t)]
    last = t[t.layer == t.groupby("model").layer.transform("max")].groupby("model")[column].agg(how)
    out = {m: float(last[m]) for m in run.sizes if m in last.index}
    return out if len(out) == len(run.sizes) and np.isfinite(list(out.values())).all() else {}


def _probe_accuracies(run: Workdir) -> dict[str, float]:
    """The memorized-vs-unmemorized linear probe's held-out balanced accuracy (the dynamics stage's
    separation table)."""
    return _last_layer(run, "separation", lambda t: t.contrast == "memorized_vs_unmemorized",
                       "probe_balanced_accuracy", "first")


def _mean_state_cosine(run: Workdir, continuation: int) -> dict[str, float]:
    """The cosine distance between the mean states of the unmemorized (0 matches) and memorized
    (`continuation` matches) levels, averaged over decoding steps (the dynamics stage's distances table: REFERENCE
    section 2, the distance Chen et al. plot against size)."""
    return _last_layer(run, "distances", lambda t: (t.level_a == 0) & (t.level_b == continuation),
                       "cosine", "mean")


def duplication_checks(run: Workdir) -> list[Check]:
    path = run.analyses_dir / "dose_fits.parquet"
    if not path.is_file():
        return [("memorization rises with duplication", "-", "NOT SHOWN", f"analyses stage not run: `memdyn run --workdir {run.root}`")]
    fits = pd.read_parquet(path)
    fits = fits[fits["measure"] == "span_count"]
    fits = fits[fits["step"] == fits.groupby("model")["step"].transform("max")].set_index("model")
    out = []
    for m in run.sizes:
        r = fits.loc[m]
        out.append((f"memorization rises with duplication ({m})",
                    f"log-odds per doubling of the span's occurrences {fmt(r.slope, r.slope_lo, r.slope_hi)}, "
                    f"{int(r.memorized)} of {int(r.n)} memorized, spearman {r.spearman:.3f}",
                    *(directional(r.slope, r.slope_lo, r.slope_hi) if np.isfinite(r.slope)
                      else ("FAIL", "no memorized sample at this size: no slope"))))
    return out


def canary_checks(run: Workdir, seed: int) -> list[Check]:
    from dynamics.analyses.canaries import final, read_canaries

    try:
        t = final(read_canaries(run.root / "canaries"))
    except Exception as e:
        return [("canary memorization and exposure rise with repetitions and size", "-", "NOT SHOWN", str(e))]
    t = t.assign(mem=(t["score"] >= 1).astype(float))
    none = ("no canary is reproduced verbatim (score 1) at any repetition count or size; the highest mean score of a "
            f"count and size is {t.groupby(['model', 'count'])['score'].mean().max():.2f}: these canaries need more "
            "repetitions (or larger models) to be extracted") if not t["mem"].any() else ""
    lo_c, hi_c = t["count"].min(), t["count"].max()
    out = []
    for value, label in (("exposure", "exposure"), ("mem", "memorization")):
        unit, scale = (" bits", 1) if value == "exposure" else (" pts", 100)
        sizes = run.sizes if value == "exposure" else [None]
        for m in sizes:  # exposure per size; memorization pooled over sizes (few canaries per count)
            part = t if m is None else t[t["model"] == m]
            a, b = part[part["count"] == lo_c], part[part["count"] == hi_c]
            d = _canary_diff(a, b, value, seed)
            per = ", ".join(f"{n}x {scale * g[value].mean():.3g}" for n, g in part.groupby("count"))
            where = m or f"all {len(run.sizes)} sizes, canaries resampled"
            status, why = directional(*d)
            out.append((f"canary {label} rises with repetition count ({where})", f"{per}{unit}; {hi_c}x - {lo_c}x = "
                        f"{fmt(*d, unit, scale)}", status, (none if value == "mem" and none else why)))
        small, large = t[t["model"] == run.sizes[0]], t[t["model"] == run.sizes[-1]]
        pair = small.set_index("canary_id")[value].sort_index(), large.set_index("canary_id")[value].sort_index()
        d = paired_diff(pair[0], pair[1], seed)
        per = ", ".join(f"{m} {scale * t.loc[t['model'] == m, value].mean():.3g}" for m in run.sizes)
        status, why = directional(*d)
        out.append((f"canary {label} rises with model size", f"{per}{unit}; {run.sizes[-1]} - {run.sizes[0]} = "
                    f"{fmt(*d, unit, scale)} (paired over {len(pair[0])} canaries)", status,
                    none if value == "mem" and none else why))
    return out


def _canary_diff(a: pd.DataFrame, b: pd.DataFrame, value: str, seed: int) -> tuple[float, float, float]:
    """mean(b) - mean(a), canaries resampled (all of a canary's rows together, so sizes sharing a
    canary count once)."""
    ga, gb = a.groupby("canary_id")[value].mean(), b.groupby("canary_id")[value].mean()
    wa, wb = a.groupby("canary_id").size(), b.groupby("canary_id").size()
    rng = np.random.default_rng(seed)
    ia, ib = rng.integers(0, len(ga), (N_RESAMPLES, len(ga))), rng.integers(0, len(gb), (N_RESAMPLES, len(gb)))
    ma = (ga.to_numpy()[ia] * wa.to_numpy()[ia]).sum(1) / wa.to_numpy()[ia].sum(1)
    mb = (gb.to_numpy()[ib] * wb.to_numpy()[ib]).sum(1) / wb.to_numpy()[ib].sum(1)
    d = mb - ma
    return float(b[value].mean() - a[value].mean()), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))


def capacity_checks(run: Workdir, seed: int) -> list[Check]:
    name = "bits memorized grow with model size"
    path = run.capacity_dir / "text_samples.parquet"
    if run.capacity is None or not path.is_file():
        return [(name, "-", "NOT SHOWN", f"capacity stage not run: `memdyn capacity text --family {run.family_dir}`")]
    cap = run.capacity.set_index("model")
    per = pd.read_parquet(path)
    a, b = (per[per["model"] == m].set_index("seq_idx")["unintended_bits"].sort_index() for m in (run.sizes[0], run.sizes[-1]))
    n_train = float(cap.loc[run.sizes[-1], "train_samples"])
    both = a.index.intersection(b.index)
    d = paired_diff(a.loc[both], b.loc[both], seed, groups=documents(run, both))
    nums = ", ".join(f"{m} {cap.loc[m, 'bits_memorized']:.4g} bits" for m in run.sizes if m in cap.index)
    return [(name, f"{nums}; {run.sizes[-1]} - {run.sizes[0]} = {fmt(*d, ' bits', n_train, '+.4g')} "
             f"(members' documents resampled, scaled to the {n_train:.0f} training samples)", *directional(*d))]


def all_checks(run: Workdir, seed: int = 0) -> list[Check]:
    checks = share_checks(run, seed)
    checks += jump_checks(run, "entropy_nats", "unmemorized", True, "entropy", " nats")
    checks += jump_checks(run, "orig_n1", "unmemorized", False, "the unigram count of the true token", "")
    checks += separation_checks(run, seed) + duplication_checks(run) + canary_checks(run, seed) + capacity_checks(run, seed)
    return checks
