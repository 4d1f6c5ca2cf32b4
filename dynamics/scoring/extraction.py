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
reductions here run on those chunks. Nothing sorts the vocabulary: top-k values come from a
two-level selection (block maxima, then the k largest of the k best blocks), the nucleus test
from the mass above the true token, and the nucleus' mass from the few largest probabilities
(more only where the nucleus is larger). `Extraction` skips every position no live cell needs: a
cell's p_z is 0 from its first true token outside the kept set on, so later positions are not
computed for it (stored as NaN).
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
        if scheme.name in {s.name for s in schemes}:
            raise MemdynError(f"--schemes: {item!r} repeats the scheme {scheme.name}")
        schemes.append(scheme)
    return schemes


def scheme_from_name(name: str) -> Scheme:
    return parse_schemes(name)[0]


# ---------------------------------------------------------------------------------------------
# exact per-position probabilities of the true token, on chunks of logits


def topk_values(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row of logits [n, V], sorted descending; exactly torch.topk's.

    torch.topk over the whole vocabulary is slow on a CPU (several times the head's matmul), so it
    runs twice on less: over block maxima (blocks of b), then over the k best blocks' elements.
    Every value above the k-th largest block maximum lies in those blocks (fewer than k blocks
    have a larger maximum), and those blocks hold at least k values >= it, so the k largest values
    are the same multiset.
    """
    n, V = logits.shape
    b = 1
    while b * 2 <= math.sqrt(V / k) and V % (b * 2) == 0:
        b *= 2
    if b < 4 or k >= V // b:
        return logits.topk(min(k, V), -1).values
    blocks = logits.view(n, V // b, b)
    best = blocks.amax(-1).topk(k, -1, sorted=False).indices  # [n, k]
    candidates = blocks.gather(1, best[..., None].expand(n, k, b)).view(n, k * b)
    return candidates.topk(k, -1).values


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


def _topp_mass(logits: torch.Tensor, lse: torch.Tensor, tau: float, p: float) -> torch.Tensor:
    """Nucleus mass of rows whose nucleus extends below their true token (no k): from the largest
    64 probabilities, then 4x more where that is not enough, up to the whole (sorted) row."""
    n, V = logits.shape
    out = torch.empty(n, device=logits.device)
    rows = torch.arange(n, device=logits.device)
    m = 64
    while len(rows):
        m = min(m, V)
        values = topk_values(logits[rows], m) if m < V else logits[rows].sort(-1, descending=True).values
        q = (values / tau - lse[rows, None]).exp()
        mass, resolved = _nucleus_mass(q, torch.ones_like(q), p)
        if m == V:
            resolved[:] = True
        out[rows[resolved]] = mass[resolved]
        rows = rows[~resolved]
        m *= 4
    return out


def scheme_logprob(logits: torch.Tensor, target: torch.Tensor, scheme: Scheme, lse1: torch.Tensor,
                   topk_cache: dict | None = None) -> torch.Tensor:
    """Natural log of the scheme's probability of target [n] under logits [n, V] (fp32); -inf where
    the target is outside the kept set. lse1: logsumexp of the unscaled logits per row (the
    scorer has it from its cross-entropy). topk_cache: {k: (values, extra ties)} shared by schemes
    with the same k on the same rows."""
    tau, k = scheme.temperature, scheme.top_k
    y = logits.gather(1, target[:, None])[:, 0]  # [n] true-token logit
    out = torch.full_like(y, -torch.inf)
    if k is not None and k < logits.size(1):
        rows = torch.nonzero((logits > y[:, None]).sum(-1) < k)[:, 0]  # target in the top-k
        if topk_cache is not None and k in topk_cache:
            values, extra = topk_cache[k]
        else:
            values = topk_values(logits, k)
            extra = (logits >= values[:, -1:]).sum(-1) - k  # tokens tied with the k-th beyond the k
            if topk_cache is not None:
                topk_cache[k] = values, extra
        values, extra, yr = values[rows], extra[rows], y[rows]
        weight = torch.ones_like(values)
        weight[:, -1] += extra
        scaled = values / tau
        lse = (scaled[:, :1] + ((scaled - scaled[:, :1]).exp() * weight).sum(-1, keepdim=True).log())[:, 0]
        logp = yr / tau - lse
        if scheme.nucleus:
            q = (scaled - lse[:, None]).exp()
            mass, _ = _nucleus_mass(q, weight, scheme.top_p)  # the nucleus lies inside the top-k
            above = (q * weight * (values > yr[:, None])).sum(-1)
            logp = torch.where(above < scheme.top_p, logp - mass.log(), -torch.inf)
        out[rows] = logp
        return out
    lse = lse1 if tau == 1 else (logits / tau).logsumexp(-1)
    logp = y / tau - lse
    if not scheme.nucleus:
        return logp
    q_all = (logits / tau - lse[:, None]).exp()
    greater = logits > y[:, None]
    above = (q_all * greater).sum(-1)
    inside = above < scheme.top_p
    # the nucleus holds every token at least as probable as the target; where those already reach
    # p it is exactly them, else it extends below the target
    ties = (logits == y[:, None]).sum(-1)
    upto = above + ties * logp.exp()
    mass = upto.clone()
    extend = torch.nonzero(inside & (upto < scheme.top_p))[:, 0]
    if len(extend):
        mass[extend] = _topp_mass(logits[extend], lse[extend], tau, scheme.top_p)
    out[inside] = logp[inside] - mass[inside].log()
    return out


# ---------------------------------------------------------------------------------------------
# the scorer's side: per-position values over a teacher-forced pass, only where a live cell needs them


class Extraction:
    """Per-position log-probabilities of the true tokens under each scheme, over one teacher-forced
    pass of a batch, fed chunk by chunk. Context k's continuation positions are k-1 .. k-2+C
    (position j predicts token j+1). A cell dies at its first -inf; a position is computed only
    while some context covering it is alive, the rest stay NaN (never read by a live cell)."""

    def __init__(self, schemes: list[Scheme], batch: int, length: int, contexts: list[int], continuation: int, device):
        self.schemes, self.contexts, self.C = schemes, contexts, continuation
        self.values = torch.full((len(schemes), batch, length), torch.nan, device=device)  # [S, B, T]
        self.start = torch.tensor([k - 1 for k in contexts], device=device)  # [K] first position
        # per scheme and context: first position whose true token is outside the kept set
        self.dead_at = torch.full((len(schemes), batch, len(contexts)), length + continuation, device=device)

    def add(self, a: int, logits: torch.Tensor, targets: torch.Tensor, nll: torch.Tensor) -> None:
        """logits [B, P, V] of positions a .. a+P-1, their true next tokens [B, P] and NLL [B, P]."""
        B, P, V = logits.shape
        if not self.schemes:
            return
        pos = torch.arange(a, a + P, device=logits.device)
        covers = (pos[None, :] >= self.start[:, None]) & (pos[None, :] < self.start[:, None] + self.C)  # [K, P]
        flat_logits, flat_targets = logits.reshape(B * P, V), targets.reshape(-1)
        lse1 = (nll + logits.gather(2, targets[..., None])[..., 0]).reshape(-1)
        caches: dict = {}  # rows -> top-k cache: schemes that differ only in temperature share rows and top-k values
        for s, scheme in enumerate(self.schemes):
            alive = pos[None, None, :] <= self.dead_at[s][:, :, None]  # [B, K, P] up to the first zero
            need = (alive & covers[None]).any(1).reshape(-1)  # [B * P]
            rows = torch.nonzero(need)[:, 0]
            if not len(rows):
                continue
            cache = caches.setdefault(tuple(rows.tolist()), {})
            logp = scheme_logprob(flat_logits[rows], flat_targets[rows], scheme, lse1[rows], cache)
            block = self.values[s, :, a : a + P].reshape(-1)
            block[rows] = logp
            self.values[s, :, a : a + P] = block.view(B, P)
            zero = torch.isneginf(self.values[s, :, a : a + P])[:, None, :] & covers[None]  # [B, K, P]
            first = torch.where(zero, pos, self.dead_at.new_tensor(10**9)).amin(-1)
            self.dead_at[s] = torch.minimum(self.dead_at[s], first)

    def result(self) -> np.ndarray:
        """[S, B, K, C] float32: per continuation position, NaN after each cell's first -inf."""
        S, B, _ = self.values.shape
        idx = self.start[:, None] + torch.arange(self.C, device=self.values.device)[None, :]  # [K, C]
        out = self.values[:, :, idx]  # [S, B, K, C]
        after = idx[None, None] > self.dead_at[..., None]
        return out.masked_fill(after, torch.nan).cpu().numpy()


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
        cols[f"logp_{scheme.name}"] = logp[s].astype(np.float32)
        for p in DISCOVERY_P:
            cols[f"n{round(100 * p)}_{scheme.name}"] = draws_needed(logp[s], p)
    return cols
