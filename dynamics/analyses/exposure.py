"""Exposure (Carlini et al. 2019, "The secret sharer"; REFERENCE section 6).

For a canary s drawn from a space R of candidates, exposure = log2 |R| - log2 rank(s), where rank
orders R by the model's log-probability (rank 1 = the most likely candidate). R is far too large to
enumerate (48 random tokens from a 2k vocabulary: 2^528), so, as the paper does, the rank comes
from the distribution of the log-probabilities of N candidates drawn from R the way the canaries
were drawn: rank ~= |R| * P(candidate log-prob >= canary log-prob), hence

    exposure = min(log2 |R|, -log2 P),   P = skew-normal survival function at the canary's log-prob

with the skew-normal fitted (method of moments, scipy.stats.skewnorm) to the candidates'
log-probabilities; the paper found a skew-normal fits them well. The cap is rank 1. `exposure_empirical` counts
instead, -log2((1 + #candidates at least as likely) / (N + 1)), exact in distribution but bounded by
log2(N + 1); the two agree where the canary sits inside the candidates' range.

Log-probabilities are of the whole sequence, every token given the ones before it after an
`<|endoftext|>` (the sequence start a canary has inside a document boundary), in bits.
"""

from __future__ import annotations

import numpy as np
import torch


def fit_candidates(logps: np.ndarray):
    """A frozen scipy skew-normal fitted to candidate log-probabilities by the method of moments
    (closed form from mean, variance and skewness, the sample skewness clipped to the family's
    range |g| < 0.995): deterministic and fast enough for every checkpoint."""
    from scipy import stats

    x = np.asarray(logps, dtype=float)
    mean, sd = x.mean(), x.std()
    g = float(np.clip(stats.skew(x), -0.99, 0.99))
    t = abs(g) ** (2 / 3)
    delta = np.sign(g) * np.sqrt(np.pi / 2 * t / (t + ((4 - np.pi) / 2) ** (2 / 3)))
    omega = sd / np.sqrt(1 - 2 * delta**2 / np.pi)
    return stats.skewnorm(delta / np.sqrt(1 - delta**2), mean - omega * delta * np.sqrt(2 / np.pi), omega)


def exposure(canary_logp, candidate_logps: np.ndarray, space_log2: float, fitted=None) -> tuple[np.ndarray, np.ndarray]:
    """(exposure from the fitted tail, empirical exposure) of each canary log-prob, in bits."""
    s = np.atleast_1d(np.asarray(canary_logp, dtype=float))
    cand = np.sort(np.asarray(candidate_logps, dtype=float))
    dist = fitted if fitted is not None else fit_candidates(cand)
    with np.errstate(divide="ignore"):
        fit = -dist.logsf(s) / np.log(2)
    fit = np.minimum(np.nan_to_num(fit, posinf=np.inf), space_log2)
    at_least = len(cand) - np.searchsorted(cand, s, side="left")  # candidates with logp >= canary
    empirical = np.minimum(-np.log2((1 + at_least) / (len(cand) + 1)), space_log2)
    return fit, empirical


def token_logprobs(model, seqs: list[np.ndarray], batch_size: int, bos: int = 0, pad: int = 1) -> list[np.ndarray]:
    """Per-token log2 p of each sequence after a `bos` token (right-padded batches)."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            rows = order[i : i + batch_size]
            n = max(len(seqs[r]) for r in rows)
            x = torch.full((len(rows), n + 1), pad, dtype=torch.long)
            x[:, 0] = bos
            for j, r in enumerate(rows):
                x[j, 1 : len(seqs[r]) + 1] = torch.from_numpy(np.array(seqs[r], dtype=np.int64))
            logits = model(input_ids=x[:, :-1].to(device)).logits.float()
            lp = (torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None].to(device))[..., 0] / np.log(2)).cpu().numpy()
            for j, r in enumerate(rows):
                out[r] = lp[j, : len(seqs[r])]
    return out
