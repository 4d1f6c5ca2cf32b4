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
reductions here run on those chunks. `Extraction` skips every position no live cell needs: a
cell's p_z is 0 from its first true token outside the kept set on, so later positions are not
computed for it (stored as NaN). Of the rows that some top-k or top-p scheme needs, the largest
logits are partitioned out and sorted once for all schemes (numpy's vectorised partition and
sort: 512 with a nucleus, else k + 1); every kept set and normaliser is read off them, a nucleus
that reaches further off its whole row, sorted then.
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
# exact per-position probabilities of the true token, on rows of logits


def sort_descending(logits: torch.Tensor, rows: torch.Tensor | None = None, width: int | None = None) -> torch.Tensor:
    """Each row of logits [N, V] (or its rows `rows`) in descending order in its first `width`
    entries (None: all), the rest holding its smaller logits in no order. On a CPU numpy's
    vectorised sort (x86-simd-sort) is 10x faster than torch.sort and 2x faster than torch.topk
    of only 41 values, and its partition of the 512 largest, then their sort, 1.5x faster than the
    sort of a whole row (measured on 2048-wide rows)."""
    if logits.device.type != "cpu":
        return (logits if rows is None else logits[rows]).sort(-1, descending=True).values
    # negated (torch's negation runs on its threads, numpy's on one), so that numpy's ascending
    # order is the logits' descending one
    ranked = (-logits) if rows is None else logits.index_select(0, rows).neg_()
    negated = ranked.numpy()
    if width is not None and width < negated.shape[1]:
        negated.partition(width - 1, axis=-1)  # the width largest logits first, in any order
        negated[:, :width].sort(-1)
    else:
        negated.sort(-1)
    return ranked.neg_()


def _nucleus_mass(q: torch.Tensor, weight: torch.Tensor | float, p: float) -> torch.Tensor:
    """Mass of the nucleus (float64 [n]) from probabilities q [n, m] sorted descending that hold
    it (weight: how many tokens each entry stands for). A token is kept when the mass strictly
    above it is < p, so tied tokens share the status of the first of them."""
    mass = q.double() * weight
    above = mass.cumsum(-1) - mass  # exclusive cumulative mass, in sort order
    start = torch.ones_like(q, dtype=torch.bool)
    start[:, 1:] = q[:, 1:] != q[:, :-1]
    # mass strictly above an entry = the exclusive cumulative mass at the first entry of its ties
    strictly_above = torch.where(start, above, -torch.inf).cummax(-1).values
    return (mass * (strictly_above < p)).sum(-1)


# entries of a sorted row a nucleus is first looked for in: nearly every 0.9-nucleus of the tiny
# family is narrower (99th percentile: 434 tokens at 617k, 572 at 4.2m); the rest are searched
# in their whole row. Tried at 617k, batch 32: 64 / 256 / 512 / 1024 entries, 8.6 / 5.8 / 4.8 / 6.4
# ms per batch for the nucleus
_NUCLEUS_FIRST = 512


def _mass(logits: torch.Tensor, lse: torch.Tensor, tau: float) -> torch.Tensor:
    """Probabilities exp(logits / tau - lse)."""
    return ((logits if tau == 1 else logits / tau) - lse).exp_()


def _search_mass(q: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For probabilities q [n, V] in sort order: how many entries have an inclusive cumulative
    mass < bound [n, 1] (float64), and the inclusive cumulative mass at the entry after them (the
    last entry if none is left). By blocks of 64 entries: their sums, then one block's cumulative
    sums (a float64 cumulative sum of whole rows, sequential on a CPU, ran 9x slower). A row
    whose mass reaches the bound within a float64 rounding of a block's end may be found one
    entry off: far below float32's own resolution of the probabilities."""
    n, V = q.shape
    width = 64 if V % 64 == 0 else V
    blocks = q.view(n, V // width, width).sum(-1, dtype=torch.float64).cumsum(-1)  # [n, V / width]
    block = torch.searchsorted(blocks, bound).clamp_(max=V // width - 1)  # [n, 1] the block reaching bound
    base = torch.where(block > 0, blocks.gather(1, (block - 1).clamp(min=0)), 0.0)
    columns = block * width + torch.arange(width, device=q.device)  # [n, width]
    cum = base + q.gather(1, columns).cumsum(-1, dtype=torch.float64)
    inside = torch.searchsorted(cum, bound)  # [n, 1]
    before = block * width + inside
    return before[:, 0], cum.gather(1, inside.clamp(max=width - 1))[:, 0]


def _nucleus_logprob(ranked: torch.Tensor, y: torch.Tensor, logp: torch.Tensor, lse: torch.Tensor, tau: float,
                     p: float, needed: torch.Tensor | None = None) -> torch.Tensor:
    """Top-p log-probability of the target (logit y [n, 1], tempered log-probability logp [n]) from
    the logits [n, V] sorted descending in at least their first _NUCLEUS_FIRST entries
    (sort_descending) and their tempered logsumexp lse [n, 1]. Rows outside
    `needed` (a mask, None: all rows) may come out wrong: their whole rows are never read.

    Entry i is kept when the mass of the entries before it is < p, so the kept entries are the
    first w = 1 + #(inclusive cumulative mass < p) (a search in the cumulative sums, float64 so
    that the kept set does not hinge on the order of float32 additions near p), and the tokens
    tied with the last of them (their first one's mass above is < p)."""
    n, V = ranked.shape
    m = min(_NUCLEUS_FIRST, V)
    top = ranked[:, :m]
    bound = torch.full((n, 1), p, dtype=torch.float64, device=y.device)
    cum = _mass(top, lse, tau).double().cumsum(-1)  # [n, m] (the conversion first: 1.3x faster)
    before = torch.searchsorted(cum, bound)  # [n, 1] entries whose inclusive mass is < p
    mass = cum.gather(1, before.clamp(max=m - 1))[:, 0]
    lowest = top.gather(1, before.clamp(max=m - 1))[:, 0]  # the smallest kept logit
    following = top.gather(1, (before + 1).clamp(max=m - 1))[:, 0]  # the next one
    before = before[:, 0]
    wide = before >= m - 1  # the nucleus may reach past the first m entries
    wide = torch.nonzero(wide if needed is None else wide & needed)[:, 0]
    if len(wide):
        whole = ranked[wide]
        whole[:, m:] = sort_descending(whole[:, m:])  # sort_descending sorted only as far as m
        before[wide], mass[wide] = _search_mass(_mass(whole, lse[wide], tau), bound[wide])
        last = before[wide, None].clamp(max=V - 1)
        lowest[wide] = whole.gather(1, last)[:, 0]
        following[wide] = whole.gather(1, (last + 1).clamp(max=V - 1))[:, 0]
    tied = (following == lowest) & (before < V - 1)
    tied = torch.nonzero(tied if needed is None else tied & needed)[:, 0]
    if len(tied):  # tokens tied with the last kept one are kept too: sum the mass of all of them
        whole = ranked[tied]
        mass[tied] = (_mass(whole, lse[tied], tau).double() * (whole >= lowest[tied, None])).sum(-1)
    return torch.where(y[:, 0] >= lowest, logp - mass.log().float(), -torch.inf)


def plain_logprobs(logits: torch.Tensor, target: torch.Tensor, schemes: list[Scheme], lse1: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [S, n] of target [n] under logits [n, V] (fp32) for temperature-only
    schemes: the softmax of the whole row. lse1: logsumexp of the unscaled logits per row (the
    scorer has it from its cross-entropy)."""
    y = logits.gather(1, target[:, None])
    out = torch.empty(len(schemes), len(target), device=target.device)
    for i, scheme in enumerate(schemes):
        tau = scheme.temperature
        lse = lse1[:, None] if tau == 1 else (logits / tau).logsumexp(-1, keepdim=True)
        out[i] = (y / tau - lse)[:, 0]
    return out


def ranked_logprobs(ranked: torch.Tensor, y: torch.Tensor, schemes: list[Scheme], lse1: torch.Tensor,
                    needed: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities [S, n] of the true tokens (logits y [n]) for schemes that share a kept set
    (the same top_k and top_p and, with a top_p, temperature), -inf where the true token is
    outside it, read off the logits sorted descending (`ranked` [n, V], sort_descending) in at
    least their first sorted_width(schemes) entries. lse1: logsumexp of the unscaled logits per
    row. Rows outside `needed` (a mask, None: all rows) may come out wrong."""
    n, V = len(y), ranked.size(1)
    k = schemes[0].top_k
    y = y[:, None]  # [n, 1]
    if k is None or k >= V:  # every token, or a nucleus of the whole vocabulary
        out = torch.empty(len(schemes), n, device=y.device)
        for i, scheme in enumerate(schemes):
            tau = scheme.temperature
            if tau == 1:
                lse = lse1[:, None]
            else:
                lse = (ranked / tau).logsumexp(-1, keepdim=True)
            logp = (y / tau - lse)[:, 0]
            out[i] = _nucleus_logprob(ranked, y, logp, lse, tau, scheme.top_p, needed) if scheme.nucleus else logp
        return out
    top = ranked[:, : k + 1]  # [n, k + 1]
    values = top[:, :k]
    # tokens tied with the k-th value beyond the k are kept too: they count into its weight
    weight = None
    tied = torch.nonzero(top[:, k] == top[:, k - 1])[:, 0]
    if len(tied):
        weight = torch.ones_like(values)
        beyond = ranked[tied, k:]
        weight[tied, -1] += (beyond == values[tied, -1:]).sum(-1)
    # every scheme at once: temperatures [S, 1, 1], probabilities relative to the largest logit
    tau = torch.tensor([s.temperature for s in schemes], device=y.device)[:, None, None]
    q = ((values - values[:, :1]) / tau).exp()  # [S, n, k] per token
    weighted = q if weight is None else q * weight
    total = weighted.sum(-1, keepdim=True)  # [S, n, 1]
    logp = ((y - values[:, :1]) / tau - total.log())[..., 0]  # [S, n]
    inside = y[:, 0] >= values[:, -1]  # the target is in the top-k
    if schemes[0].nucleus:  # the nucleus lies inside the top-k; the schemes share it and their temperature
        p = schemes[0].top_p
        mass = _nucleus_mass(q[0] / total[0], 1.0 if weight is None else weight, p)
        above = (weighted[0] * (values > y)).sum(-1) / total[0, :, 0]  # mass strictly above the target
        logp = logp - mass.log().float()
        inside &= above < p
    return torch.where(inside, logp, -torch.inf)


def sorted_width(schemes: list[Scheme]) -> int:
    """How many largest logits of a row, in order, the kept sets of these schemes are read from."""
    return max([_NUCLEUS_FIRST if any(s.nucleus for s in schemes) else 1] + [s.top_k + 1 for s in schemes if s.top_k])


def kept_set(scheme: Scheme) -> tuple | None:
    """What decides which tokens a scheme keeps (None: every token): schemes with the same kept
    set form a group that a true token leaves together."""
    if scheme.top_k is None and not scheme.nucleus:
        return None
    return scheme.top_k, scheme.top_p if scheme.nucleus else None, scheme.temperature if scheme.nucleus else None


def scheme_logprob(logits: torch.Tensor, target: torch.Tensor, scheme: Scheme, lse1: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability [n] of target [n] under logits [n, V] with one scheme."""
    lse1 = logits.logsumexp(-1) if lse1 is None else lse1
    if kept_set(scheme) is None:
        return plain_logprobs(logits, target, [scheme], lse1)[0]
    ranked = sort_descending(logits, width=sorted_width([scheme]))
    return ranked_logprobs(ranked, logits.gather(1, target[:, None])[:, 0], [scheme], lse1)[0]


# ---------------------------------------------------------------------------------------------
# the scorer's side: per-position values over a teacher-forced pass, only where a live cell needs them

_NEVER = 2**30


class Extraction:
    """Per-position log-probabilities of the true tokens under each scheme, over one teacher-forced
    pass of a batch, fed chunk by chunk. Context k's continuation positions are k-1 .. k-2+C
    (position j predicts token j+1). A cell dies at its first -inf; a position is computed only
    while some context covering it is alive, the rest stay NaN (never read by a live cell).
    Schemes with the same kept set form a group that dies together; the rows some group needs
    are sorted once for all groups."""

    def __init__(self, schemes: list[Scheme], batch: int, length: int, contexts: list[int], continuation: int, device):
        self.schemes, self.C = schemes, continuation
        self.plain = [i for i, s in enumerate(schemes) if kept_set(s) is None]  # never 0: every position computed
        groups: dict[tuple, list[int]] = {}  # kept set -> its schemes' indices
        for i, s in enumerate(schemes):
            if kept_set(s) is not None:
                groups.setdefault(kept_set(s), []).append(i)
        self.groups = list(groups.values())
        self.members = torch.tensor([i for members in self.groups for i in members], device=device)  # [S'] in group order
        self.group_of = torch.tensor([g for g, members in enumerate(self.groups) for _ in members], device=device)  # [S']
        self.width = sorted_width([s for s in schemes if kept_set(s) is not None])  # sorted entries read of each row
        # where each group's first scheme sits in members: its -inf is the group's
        self.first_of = torch.tensor(np.cumsum([0] + [len(m) for m in self.groups])[:-1], device=device)
        self.values = torch.full((len(schemes), batch, length), torch.nan, device=device)  # [S, B, T]
        self.start = torch.tensor([k - 1 for k in contexts], device=device)  # [K] first position
        self.covered = (min(contexts) - 1, max(contexts) - 2 + continuation)  # first and last position any cell covers
        position = torch.arange(length, device=device)
        self.covers = (position >= self.start[:, None]) & (position < self.start[:, None] + continuation)  # [K, T]
        # per group, sample and context: the first position whose true token is outside the kept set
        self.dead_at = torch.full((len(self.groups), batch, len(contexts)), _NEVER, device=device)  # [G, B, K]

    def add(self, a: int, logits: torch.Tensor, targets: torch.Tensor, nll: torch.Tensor) -> None:
        """logits [B, P, V] of positions a .. a+P-1, their true next tokens [B, P] and NLL [B, P]."""
        B, P, V = logits.shape
        if a + P <= self.covered[0] or a > self.covered[1]:
            return
        flat_logits, flat_targets, flat_nll = logits.reshape(B * P, V), targets.reshape(-1), nll.reshape(-1)
        for i in self.plain:
            tau = self.schemes[i].temperature
            if tau == 1:  # the plain softmax: -NLL itself
                self.values[i, :, a : a + P] = -nll
            else:
                lse1 = flat_nll + flat_logits.gather(1, flat_targets[:, None])[:, 0]
                self.values[i, :, a : a + P] = plain_logprobs(flat_logits, flat_targets, [self.schemes[i]], lse1).view(B, P)
        if not self.groups:
            return
        # the rows each group needs (while a cell covering them lives), sorted once for all groups
        covers, pos = self.covers[:, a : a + P], torch.arange(a, a + P, device=logits.device)  # [K, P], [P]
        need = ((pos <= self.dead_at[..., None]) & covers).any(2).view(len(self.groups), -1)  # [G, B * P]
        rows = torch.nonzero(need.any(0))[:, 0]
        if not len(rows):
            return
        y = flat_logits.view(-1)[rows * V + flat_targets[rows]]  # true-token logits
        lse1 = flat_nll[rows] + y
        ranked = sort_descending(flat_logits, rows, self.width)
        needed = need[:, rows]  # [G, n]
        logp = torch.cat([ranked_logprobs(ranked, y, [self.schemes[i] for i in members], lse1, needed[g])
                          for g, members in enumerate(self.groups)])  # [S', n]
        logp = torch.where(needed[self.group_of], logp, torch.nan)
        at = (rows // P) * self.values.size(2) + (a + rows % P)  # where each row goes in a scheme's [B, T]
        self.values.view(len(self.schemes), -1).index_put_((self.members[:, None], at[None]), logp)
        # a cell dies at the first position where its group's kept set leaves the true token out
        zero = torch.zeros(len(self.groups), B * P, dtype=torch.bool, device=logits.device)
        zero[:, rows] = torch.isneginf(logp[self.first_of])
        zero = zero.view(-1, B, 1, P) & covers  # [G, B, K, P]
        torch.minimum(self.dead_at, torch.where(zero, pos, _NEVER).amin(-1), out=self.dead_at)

    def result(self) -> np.ndarray:
        """[S, B, K, C] float32: per continuation position, NaN after each cell's first -inf."""
        idx = self.start[:, None] + torch.arange(self.C, device=self.values.device)[None, :]  # [K, C]
        out = self.values[:, :, idx]  # [S, B, K, C]
        for g, members in enumerate(self.groups):
            out[members] = out[members].masked_fill(idx > self.dead_at[g][..., None], torch.nan)
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
    stored = np.asarray(logp, dtype=np.float32)
    # from the stored values, so that the table agrees with itself; every scheme at once
    needed = {p: draws_needed(stored, p) for p in DISCOVERY_P}
    cols = {}
    for s, scheme in enumerate(schemes):
        cols[f"logp_{scheme.name}"] = stored[s]
        for p in DISCOVERY_P:
            cols[f"n{round(100 * p)}_{scheme.name}"] = needed[p][s]
    return cols
