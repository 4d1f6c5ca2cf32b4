"""Recitation / reconstruction / recollection (Prashanth et al. 2024; REFERENCE sections 5 and 6).

Each sample, at a (context k, continuation c) cell, falls in the first category whose rule holds:

  recitation      its span sample[0:k+c] occurs more than 5 times in the training stream (the
                  n-gram index; the sample's own occurrence counts, as a duplicate count does)
  reconstruction  the true continuation follows a template the context sets up, by one of:
                    repeat     the continuation repeats the last p context tokens with period p,
                               for some p <= min(k, c // 2) (so the pattern recurs at least
                               three times in the span): x[t] == x[t - p] for all t in [k, k + c)
                    tokens     the token ids of x[k-1 : k+c] form an arithmetic progression with
                               a nonzero step (byte-level runs such as "abcdef")
                    numbers    the integers in the decoded span, from the last two of the context
                               through every one of the continuation, form an arithmetic
                               progression with a nonzero step, at least three numbers and at
                               least one in the continuation ("1, 2, 3, 4", "line 10 ... line 20")
  recollection    the rest: neither highly duplicated nor predictable from a pattern
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dynamics.bootstrap import mean_ci

RECITATION_MIN = 6  # "duplicated more than 5 times"
CATEGORIES = ("recitation", "reconstruction", "recollection")
_NUMBER = re.compile(r"\d+")


def repeat_period(x: np.ndarray, k: int, c: int) -> int:
    """The smallest period p <= min(k, c // 2) that the continuation x[k:k+c] continues, else 0."""
    x = np.asarray(x)
    for p in range(1, min(k, c // 2) + 1):
        if np.array_equal(x[k : k + c], x[k - p : k + c - p]):
            return p
    return 0


def token_progression(x: np.ndarray, k: int, c: int) -> bool:
    d = np.diff(np.asarray(x[max(k - 1, 0) : k + c], dtype=np.int64))
    return len(d) > 1 and d[0] != 0 and bool(np.all(d == d[0]))


def number_progression(context_text: str, continuation_text: str) -> bool:
    text = context_text + continuation_text
    nums = [(int(m.group()), m.end() > len(context_text)) for m in _NUMBER.finditer(text) if len(m.group()) <= 15]
    in_cont = [v for v, cont in nums if cont]
    if not in_cont:
        return False
    seq = [v for v, cont in nums if not cont][-2:] + in_cont
    if len(seq) < 3:
        return False
    d = np.diff(np.asarray(seq, dtype=np.int64))
    return d[0] != 0 and bool(np.all(d == d[0]))


def reconstruction_rule(x: np.ndarray, k: int, c: int, decode=None) -> str:
    """Which reconstruction rule the sample's span satisfies ('' for none); decode(tokens) -> str
    enables the numbers rule."""
    p = repeat_period(x, k, c)
    if p:
        return f"repeat:{p}"
    if token_progression(x, k, c):
        return "tokens"
    if decode is not None and number_progression(decode(list(map(int, x[:k]))), decode(list(map(int, x[k : k + c])))):
        return "numbers"
    return ""


def reconstruction_rules(x: np.ndarray, k: int, c: int, decode=None) -> list[str]:
    """reconstruction_rule for every row of x [n, >= k + c], the token rules vectorised over rows."""
    x = np.asarray(x, dtype=np.int64)
    rules = np.full(len(x), "", dtype=object)
    for p in range(min(k, c // 2), 0, -1):  # smallest period last, so it wins
        rules[(x[:, k : k + c] == x[:, k - p : k + c - p]).all(1)] = f"repeat:{p}"
    d = np.diff(x[:, max(k - 1, 0) : k + c], axis=1)
    steps = (d[:, :1] != 0) & (d == d[:, :1]).all(1, keepdims=True)
    rules[(rules == "") & steps[:, 0] & (d.shape[1] > 1)] = "tokens"
    if decode is not None:
        for i in np.flatnonzero(rules == ""):
            if number_progression(decode(x[i, :k].tolist()), decode(x[i, k : k + c].tolist())):
                rules[i] = "numbers"
    return list(rules)


def categorize(span_count: np.ndarray, rules: list[str]) -> np.ndarray:
    span_count = np.asarray(span_count)
    rules = np.asarray(rules, dtype=object)
    return np.where(span_count >= RECITATION_MIN, "recitation", np.where(rules != "", "reconstruction", "recollection"))


def shares(scored: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Memorized share (score 1) per (category, model, step), with a bootstrap 95% CI over documents.
    `scored` holds score table rows joined with the duplication columns (category, document)."""
    rows = []
    for (cat, model, step), g in scored.groupby(["category", "model", "step"], sort=True):
        mem = (g["score"] >= 1).to_numpy(float)
        _, _, lo, hi = mean_ci(mem, seed, groups=g["document"])
        rows.append({"category": cat, "model": model, "step": int(step), "n": len(g), "memorized": int(mem.sum()),
                     "share": mem.mean(), "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows)


def transitions(scored: pd.DataFrame, order: list[tuple[str, int]], kind: str) -> pd.DataFrame:
    """Per category, between consecutive (model, step) stages of `order`: of the samples memorized at
    the first, the share still memorized at the second (kept); of those not memorized, the share
    that becomes memorized (gained)."""
    mem = scored.assign(m=scored["score"] >= 1).set_index(["model", "step", "seq_idx"])["m"].sort_index()
    cats = scored.drop_duplicates("seq_idx").set_index("seq_idx")["category"]
    rows = []
    for (ma, sa), (mb, sb) in zip(order, order[1:]):
        a, b = mem.xs((ma, sa), level=["model", "step"]), mem.xs((mb, sb), level=["model", "step"])
        both = a.index.intersection(b.index)
        a, b = a.loc[both], b.loc[both]
        for cat in CATEGORIES:
            sel = (cats.reindex(both) == cat).to_numpy()
            was, now = a.to_numpy()[sel], b.to_numpy()[sel]
            rows.append({"kind": kind, "category": cat, "from": f"{ma}@{sa}", "to": f"{mb}@{sb}", "n": int(sel.sum()),
                         "memorized_from": int(was.sum()), "memorized_to": int(now.sum()),
                         "kept": now[was].mean() if was.any() else np.nan,
                         "gained": now[~was].mean() if (~was).any() else np.nan})
    return pd.DataFrame(rows)
