"""Probabilistic extraction (Hayes et al. 2024, REFERENCE section 6): p_z of the true continuation.

p_z is the probability that ONE draw of a sampling scheme reproduces the true continuation from the
context: the product over continuation positions of the scheme's probability of the true token.
A scheme follows transformers `generate(do_sample=True, temperature=, top_k=, top_p=)`, whose
logits processors apply, in this order:
  * temperature T: logits / T;
  * top-k: keep every token whose logit is >= the k-th largest logit (ties at the k-th value are
    all kept, as TopKLogitsWarper's `logits < kth_value` removal does), renormalise;
  * top-p: keep every token whose "mass above" (the total probability of tokens strictly more
    probable than it) is < p, renormalise. That is the smallest set, in descending probability,
    whose cumulative probability reaches p, with tokens tied at its boundary all kept (generate
    keeps a tied token or not depending on its sort order; ties of fp32 probabilities are rare).
A true token outside the kept set has probability 0 (log-probability -inf).

The (n, p)-discoverable count: the smallest n with 1 - (1 - p_z)^n >= p, i.e.
n = ceil(log(1 - p) / log(1 - p_z)); 1 when p_z = 1, inf when p_z = 0.

Cost: the scorer's teacher-forced pass already makes the logits, a few positions at a time; the
reductions here run on those chunks. One selection of the k + 1 largest logits per position that a
live top-k cell needs (over block maxima, 2.7x cheaper than torch.topk over the vocabulary on a CPU)
serves the top-k test and normaliser of every top-k scheme; a nucleus is found from a histogram of its row's mass over logit
buckets, only the boundary bucket sorted. `Extraction` skips every position no live cell needs: a cell's p_z is 0 from its first true token outside the kept set on, so later positions
are not computed for it (stored as NaN).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.errors import MemdynError

DEFAULT_SCHEMES = "t1,k40,p0.9,t0.7k40"
DISCOVERY_P = (0.5, 0.9)  # the p of the stored n columns: n50_<scheme>, n90_<scheme>

_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SCHEME = re.compile(rf"(?:t(?P<t>{_NUMBER}))?(?:k(?P<k>-?\d+))?(?:p(?P<p>{_NUMBER}))?")


@dataclass(frozen=True)
class Scheme:
    """A sampling scheme: temperature, then top-k (None: all tokens), then top-p (None or 1: all)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise MemdynError(f"--schemes: temperature must be > 0, got {self.temperature:g} (e.g. t0.7)")
        if self.top_k is not None and self.top_k < 1:
            raise MemdynError(f"--schemes: top-k must be >= 1, got {self.top_k} (e.g. k40)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise MemdynError(f"--schemes: top-p must be in (0, 1], got {self.top_p:g} (e.g. p0.9)")

    @property
    def name(self) -> str:
        """t1, k40, p0.9, t0.7k40, ...: the suffix of the score table's columns."""
        parts = [f"k{self.top_k}" if self.top_k else "", f"p{self.top_p:g}" if self.nucleus else ""]
        if self.temperature != 1 or not any(parts):
            parts.insert(0, f"t{self.temperature:g}")
        return "".join(parts)

    @property
    def nucleus(self) -> bool:
        return self.top_p is not None and self.top_p < 1

    def generate_kwargs(self) -> dict:
        """The same scheme for transformers `generate` (top_k=0 switches off its default of 50)."""
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0, "top_p": self.top_p or 1.0}


def parse_schemes(text: str) -> list[Scheme]:
    """'t1,k40,p0.9,t0.7k40' -> schemes; each item is t<temperature>, k<top-k>, p<top-p> or a
    combination in that order. Empty text: no schemes."""
    schemes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        m = _SCHEME.fullmatch(item)
        if not m or not any(m.groups()):
            raise MemdynError(f"--schemes: {item!r} is not a sampling scheme; write t<temperature>, k<top-k>, p<top-p> "
                              f"or a combination in that order, comma-separated (e.g. {DEFAULT_SCHEMES})")
        scheme = Scheme(float(m["t"]) if m["t"] else 1.0, int(m["k"]) if m["k"] else None, float(m["p"]) if m["p"] else None)
        if scheme.top_p == 1:  # p1 keeps every token: the same scheme without it
            scheme = Scheme(scheme.temperature, scheme.top_k)
        if scheme.name in {s.name for s in schemes}:
            raise MemdynError(f"--schemes: {item!r} repeats the scheme {scheme.name}")
        schemes.append(scheme)
    return schemes


def scheme_from_name(name: str) -> Scheme:
    return parse_schemes(name)[0]


# ---------------------------------------------------------------------------------------------
# exact per-position probabilities of the true token, on chunks of logits


def topk_values(logits: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The k largest values of each row of logits [N, V] (or of its rows `rows`), sorted
    descending: [n, k], exactly torch.topk's.

    On a CPU, torch.topk over the vocabulary is a scalar loop per row (it cost more than the model's
    output layer), so the selection runs on less: the rows are cut into V / b strided blocks
    (block j holds elements j, j + V/b, ...: its maximum is an elementwise max of b contiguous
    slices), the k blocks with the largest maxima are picked, and their k * b elements sorted
    (numpy's vectorised sort). Every value above the k-th largest block maximum lies in those
    blocks (fewer than k blocks have a larger maximum), and those blocks hold at least k values >=
    it, so the k largest values are the same multiset.
    """
    N, V = logits.shape
    k = min(k, V)
    b = 1 << max(0, int(math.log2(2 * math.sqrt(V / k))))  # about 2 sqrt(V / k): fastest measured
    if logits.device.type != "cpu" or b < 4 or V % b or k * b >= V:
        return (logits if rows is None else logits[rows]).topk(k, -1).values
    W = V // b
    maxima = logits.reshape(N, b, W).amax(1).numpy()  # [N, W], over every row: cheaper than copying some
    rows = np.arange(N) if rows is None else rows.numpy()
    maxima = maxima[rows]
    # the blocks at or above the k-th largest maximum (a vectorised sort finds it, 8x faster than
    # argpartition) are the k wanted unless maxima tie there
    chosen = maxima >= np.sort(maxima, -1)[:, -k, None]
    if chosen.sum() == len(rows) * k:
        best = (np.flatnonzero(chosen) % W).reshape(-1, k)
    else:
        best = np.argpartition(maxima, W - k, axis=-1)[:, W - k :]
    at = rows[:, None, None] * V + np.arange(0, V, W)[None, :, None] + best[:, None, :]  # [n, b, k] flat indices
    candidates = logits.view(-1)[torch.from_numpy(at.reshape(len(rows), b * k))]
    return torch.from_numpy(np.ascontiguousarray(np.sort(candidates.numpy(), -1)[:, : -k - 1 : -1]))


def _nucleus_mass(q: torch.Tensor, weight: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass of the nucleus from probabilities q [n, m] sorted descending (weight: how many tokens
    each entry stands for). A token is kept when the mass strictly above it is < p, so tied tokens
    share the status of the first of them. Returns (mass [n], resolved [n]): resolved where some
    entry falls outside the nucleus, so that the nucleus lies inside the m entries."""
    mass = q * weight
    above = mass.cumsum(-1) - mass  # exclusive cumulative mass, in sort order
    start = torch.ones_like(q, dtype=torch.bool)
    start[:, 1:] = q[:, 1:] != q[:, :-1]
    # mass strictly above an entry = the exclusive cumulative mass at the first entry of its ties
    strictly_above = torch.where(start, above, -torch.inf).cummax(-1).values
    kept = strictly_above < p
    return (mass * kept).sum(-1), ~kept.all(-1)


def _count_greater(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """How many entries of each row of logits [n, V] exceed value [n, 1], as a float [n]: a sum of
    signs (exact below 2^24), which a CPU computes several times faster than a bool comparison's sum."""
    return (logits - value).clamp_(min=0).sign_().sum(-1)


def top_width(schemes: list[Scheme], V: int) -> int:
    """How many largest logits per row a top-k group needs: k + 1 (the next tells whether the k-th
    value has ties beyond it)."""
    return min(max((s.top_k or 0) + 1 for s in schemes), V)


def group_logprobs(logits: torch.Tensor, target: torch.Tensor, schemes: list[Scheme], lse1: torch.Tensor,
                   top: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Natural log of each scheme's probability of target [n] under logits [n, V] (fp32): [S, n],
    -inf where the target is outside the kept set. The schemes share top_k and top_p (and, with a
    top_p, the temperature), hence the kept-set test. lse1: logsumexp of the unscaled logits per
    row (the scorer has it from its cross-entropy); top: a top-k group's rows' top_width largest
    logits, descending (selected here when not given). rows: the n rows of a larger logits [N, V] to
    compute (target, lse1 and top are theirs), so that a top-k group copies none."""
    n, V = len(target), logits.size(1)
    k = schemes[0].top_k if schemes[0].top_k is not None and schemes[0].top_k < V else None
    if rows is not None and (k is None or top is None):
        logits, rows = logits[rows], None  # a nucleus or the plain softmax reads whole rows: copy them once
    y = (logits.gather(1, target[:, None]) if rows is None else logits[rows, target][:, None])  # [n, 1] true-token logit
    out = torch.full((len(schemes), n), -torch.inf, device=logits.device)
    if top is None and k is not None:
        top = topk_values(logits, top_width(schemes, V))
    if k is not None:
        inside = torch.nonzero(y[:, 0] >= top[:, k - 1])[:, 0]  # the target is in the top-k
        if not len(inside):
            return out
        values, yr = top[inside, :k], y[inside]
        weight = torch.ones_like(values)
        # tokens tied with the k-th value beyond the k are kept too: count them into its weight
        tied = torch.nonzero(top[inside, k] == top[inside, k - 1])[:, 0]
        if len(tied):
            tied_logits = logits[inside[tied] if rows is None else rows[inside[tied]]]
            weight[tied, -1] += (V - k) - _count_greater(-tied_logits, -values[tied, -1:])
        for i, scheme in enumerate(schemes):
            scaled = values / scheme.temperature
            lse = (scaled[:, :1] + ((scaled - scaled[:, :1]).exp() * weight).sum(-1, keepdim=True).log())  # [m, 1]
            logp = (yr / scheme.temperature - lse)[:, 0]
            if scheme.nucleus:  # the nucleus lies inside the top-k
                q = (scaled - lse).exp()
                mass, _ = _nucleus_mass(q, weight, scheme.top_p)
                above = (q * weight * (values > yr)).sum(-1)
                logp = torch.where(above < scheme.top_p, logp - mass.log(), -torch.inf)
            out[i, inside] = logp
        return out
    for i, scheme in enumerate(schemes):
        tau = scheme.temperature
        lse = lse1[:, None] if tau == 1 else (logits / tau).logsumexp(-1, keepdim=True)
        logp = (y / tau - lse)[:, 0]
        if not scheme.nucleus:
            out[i] = logp
        else:
            out[i] = _nucleus_logprob(logits, y, logp, lse, tau, scheme.top_p)
    return out


# the histogram of _nucleus_logprob: buckets 1/16 logit wide below each row's maximum (16 logits
# down: below that, the tokens hold so little mass that a nucleus ends there only for p near 1)
_BUCKETS, _PER_LOGIT = 256, 16


def _nucleus_logprob(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor, lse: torch.Tensor, tau: float,
                      p: float) -> torch.Tensor:
    """Top-p log-probability of the target (logit y [n, 1], tempered log-probability logp [n]) under
    logits [n, V], without sorting the rows (a sort of each row, or a selection of its largest
    logits, cost more than the model's output layer on a CPU): the tokens' probabilities are summed
    per bucket of logits below the row's maximum; the nucleus boundary lies in the first bucket
    where the cumulative mass reaches p (every token of an earlier bucket has less mass above it,
    every token of a later one at least p), and only that bucket's tokens are sorted, to find which
    of them have mass strictly above < p (ties share the first one's)."""
    n = logits.size(0)
    q = ((logits if tau == 1 else logits / tau) - lse).exp_()  # [n, V]
    # (max - logit) * 16 in one rounding (the scaling is exact), so monotone in the logit
    bucket = torch.add(logits.amax(-1, keepdim=True) * _PER_LOGIT, logits, alpha=-_PER_LOGIT).clamp_(max=_BUCKETS - 1).long()
    cum = q.new_zeros(n, _BUCKETS).scatter_add_(1, bucket, q).cumsum(1)
    edge = (cum < p).sum(1, keepdim=True).clamp_(max=_BUCKETS - 1)  # [n, 1] the boundary's bucket
    before = torch.where(edge > 0, cum.gather(1, (edge - 1).clamp(min=0)), 0.0)[:, 0]  # mass of the buckets before it
    if logits.device.type == "cpu":  # numpy's flatnonzero is several times faster than torch's nonzero
        at = torch.from_numpy(np.flatnonzero((bucket == edge).numpy()))
    else:
        at = torch.nonzero((bucket == edge).view(-1))[:, 0]
    rows, values, mass = at // logits.size(1), logits.view(-1)[at], q.view(-1)[at]
    order = torch.sort(-values, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # by row, then descending logit
    rows, values, mass = rows[order], values[order], mass[order].double()
    new_row = torch.ones_like(rows, dtype=torch.bool)
    new_row[1:] = rows[1:] != rows[:-1]
    new_value = new_row.clone()
    new_value[1:] |= values[1:] != values[:-1]
    above = mass.cumsum(0) - mass  # exclusive, over all rows: minus each row's start
    above = above - above[new_row][torch.cumsum(new_row, 0) - 1]
    above = above[new_value][torch.cumsum(new_value, 0) - 1]  # strictly above: that of the first of its ties
    kept = before[rows] + above < p  # the first token of the bucket always is
    nucleus = before + torch.zeros_like(before).index_add_(0, rows, torch.where(kept, mass, 0.0).float())
    lowest = torch.full_like(before, torch.inf).scatter_reduce_(0, rows, torch.where(kept, values, torch.inf), "amin")
    return torch.where(y[:, 0] >= lowest, logp - nucleus.log(), -torch.inf)


def scheme_logprob(logits: torch.Tensor, target: torch.Tensor, scheme: Scheme, lse1: torch.Tensor | None = None) -> torch.Tensor:
    """group_logprobs of one scheme: [n]."""
    lse1 = logits.logsumexp(-1) if lse1 is None else lse1
    return group_logprobs(logits, target, [scheme], lse1)[0]


# ---------------------------------------------------------------------------------------------
# the scorer's side: per-position values over a teacher-forced pass, only where a live cell needs them

_NEVER = 2**30


class Extraction:
    """Per-position log-probabilities of the true tokens under each scheme, over one teacher-forced
    pass of a batch, fed chunk by chunk. Context k's continuation positions are k-1 .. k-2+C
    (position j predicts token j+1). A cell dies at its first -inf; a position is computed only
    while some context covering it is alive, the rest stay NaN (never read by a live cell).
    Schemes with the same kept-set test (the same top-k and top-p) form a group that dies together
    and shares its top-k values."""

    def __init__(self, schemes: list[Scheme], batch: int, length: int, contexts: list[int], continuation: int, device):
        self.schemes, self.C = schemes, continuation
        self.groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(schemes):
            sig = (s.top_k, s.top_p if s.nucleus else None, s.temperature if s.nucleus else None)
            self.groups.setdefault(sig, []).append(i)
        self.values = torch.full((len(schemes), batch, length), torch.nan, device=device)  # [S, B, T]
        self.start = torch.tensor([k - 1 for k in contexts], device=device)  # [K] first position
        position = torch.arange(length, device=device)
        self.covers = (position >= self.start[:, None]) & (position < self.start[:, None] + continuation)  # [K, T]
        # per group and context: the first position whose true token is outside the kept set
        self.dead_at = {sig: torch.full((batch, len(contexts)), _NEVER, device=device) for sig in self.groups}

    def add(self, a: int, logits: torch.Tensor, targets: torch.Tensor, nll: torch.Tensor) -> None:
        """logits [B, P, V] of positions a .. a+P-1, their true next tokens [B, P] and NLL [B, P]."""
        B, P, V = logits.shape
        covers = self.covers[:, a : a + P]  # [K, P]
        if not covers.any():
            return
        pos = torch.arange(a, a + P, device=logits.device)
        flat_logits, flat_targets = logits.reshape(B * P, V), targets.reshape(-1)
        lse1 = (nll + logits.gather(2, targets[..., None])[..., 0]).reshape(-1)
        # the rows each group needs (while a cell covering them lives), and one selection of the
        # largest logits, shared by the top-k groups
        need = {sig: ((pos <= dead[:, :, None]) & covers).any(1).view(-1) for sig, dead in self.dead_at.items()}
        ranked = [sig for sig in self.groups if sig[0] is not None]
        top = None
        if ranked:
            wanted = torch.stack([need[sig] for sig in ranked]).any(0)  # [B * P] rows some top-k group needs
            if wanted.any():
                top = topk_values(flat_logits, top_width([s for s in self.schemes if s.top_k], V), torch.nonzero(wanted)[:, 0])
                slot = torch.cumsum(wanted, 0) - 1  # row -> its row of top
        for sig, members in self.groups.items():
            schemes = [self.schemes[i] for i in members]
            if sig == (None, None, None):  # temperature only: never 0, every position computed
                self.values[members, :, a : a + P] = group_logprobs(flat_logits, flat_targets, schemes, lse1).view(-1, B, P)
                continue
            dead = self.dead_at[sig]
            rows = torch.nonzero(need[sig])[:, 0]
            if not len(rows):
                continue
            block = torch.full((len(members), B * P), torch.nan, device=logits.device)
            block[:, rows] = group_logprobs(flat_logits, flat_targets[rows], schemes, lse1[rows],
                                            top[slot[rows]] if sig[0] is not None else None, rows=rows)
            block = block.view(-1, B, P)
            self.values[members, :, a : a + P] = block
            zero = torch.isneginf(block[0])[:, None, :] & covers  # [B, K, P]
            torch.minimum(dead, torch.where(zero, pos, _NEVER).amin(-1), out=dead)

    def result(self) -> np.ndarray:
        """[S, B, K, C] float32: per continuation position, NaN after each cell's first -inf."""
        idx = self.start[:, None] + torch.arange(self.C, device=self.values.device)[None, :]  # [K, C]
        out = self.values[:, :, idx]  # [S, B, K, C]
        for sig, members in self.groups.items():
            out[members] = out[members].masked_fill(idx > self.dead_at[sig][..., None], torch.nan)
        return out.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# table columns


def cell_logprobs(per_position: np.ndarray, continuations: list[int]) -> dict[int, np.ndarray]:
    """log p_z per continuation length, by prefix sums of per-position values [..., C] (NaN after a
    -inf counts as -inf)."""
    cum = np.cumsum(np.where(np.isnan(per_position), -np.inf, per_position.astype(np.float64)), -1)
    return {c: cum[..., c - 1] for c in continuations}


def draws_needed(logp: np.ndarray, p: float) -> np.ndarray:
    """Smallest n with 1 - (1 - p_z)^n >= p, from log p_z (float64; inf where p_z = 0 or where n
    exceeds the float range)."""
    logp = np.asarray(logp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # -log(1 - p_z), accurate for tiny p_z (log1p) and for p_z near 1 (log of -expm1)
        neg_log_miss = np.where(logp < -0.693, -np.log1p(-np.exp(logp)), -np.log(-np.expm1(logp)))
        n = np.ceil(-math.log1p(-p) / neg_log_miss * (1 - 1e-12))  # (1 - 1e-12): no rounding up past an exact integer
    return np.where(logp >= 0, 1.0, np.where(np.isneginf(logp), np.inf, np.maximum(n, 1.0)))


def extraction_columns(schemes: list[Scheme], logp: np.ndarray) -> dict[str, np.ndarray]:
    """Score-table columns of one continuation length: logp_<scheme> (float32) and n50_/n90_<scheme>
    (float64) from log p_z [S, n]."""
    cols = {}
    for s, scheme in enumerate(schemes):
        stored = logp[s].astype(np.float32)
        cols[f"logp_{scheme.name}"] = stored
        for p in DISCOVERY_P:  # from the stored value, so that the table agrees with itself
            cols[f"n{round(100 * p)}_{scheme.name}"] = draws_needed(stored, p)
    return cols
