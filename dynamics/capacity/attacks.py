"""Membership-inference attacks: per-sample scores and their metrics (shared/REFERENCE.md section 6).

Per sample x = x_0 .. x_{T-1} under a causal LM (the first token has no context and is not scored):
  loss         mean NLL in nats of x_1 .. x_{T-1}                          (lower = member)
  zlib         loss / zlib-compressed length in bytes of the decoded text   (lower = member;
               Carlini et al. 2021: the compressor discounts text that is merely predictable)
  min_k_<k>    mean log p of the k% least likely tokens (Shi et al. 2024)   (higher = member)
  min_k_pp_<k> mean of the k% lowest (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t the mean and
               standard deviation of log p over the vocabulary under the model's own next-token
               distribution: mu = sum_v p_v log p_v, sigma^2 = sum_v p_v (log p_v - mu)^2
               (Zhang et al. 2024)                                           (higher = member)
  reference    target loss - reference model's loss (lower = member)
k% of the T-1 scored tokens is floor(k/100 * (T-1)), at least 1.

Metrics per attack, on a member score oriented so that higher means member:
  auroc        sklearn's roc_auc_score; a 95% interval from a seeded stratified bootstrap
               (members and non-members resampled separately) and, where each sample's document
               is known, a second one that resamples documents instead (auroc_doc_lo / _hi):
               samples of one document are not independent, so the first is too narrow there
  tpr@fpr      the largest TPR among the ROC operating points (sklearn's roc_curve) with
               FPR <= the target: no interpolation between points, so with N non-members the
               finest FPR is 1/N and below it TPR is that of zero false positives
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from dynamics.bootstrap import resample_counts, weighted_auroc

MIN_K = (10, 20)
MIN_K_PP = (20,)
FPRS = (0.01, 0.001)
N_BOOTSTRAP = 1000
# column -> orientation: multiply by it to get a score where higher means member
ATTACKS = {"loss": -1.0, "zlib": -1.0, **{f"min_k_{k}": 1.0 for k in MIN_K},
           **{f"min_k_pp_{k}": 1.0 for k in MIN_K_PP}, "reference": -1.0}
# positions whose [B, n, V] logits exist at once (as the scorer's kernel): never the whole [B, T, V]
_LOGIT_CHUNK = 8


@torch.inference_mode()
def token_statistics(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For x [B, T]: log p(x_t | x_<t), and the mean mu_t and std sigma_t of log p over the
    vocabulary under the model's next-token distribution, for t = 1..T-1 -> three [B, T-1] fp32."""
    from dynamics.scoring.kernel import _has_plain_head

    B, T = x.shape
    if _has_plain_head(model):  # logits made from the hidden states a few positions at a time
        hidden, head = model.base_model(input_ids=x).last_hidden_state, model.get_output_embeddings()
        logits_at = lambda a, b: head(hidden[:, a:b]).float()  # noqa: E731
    else:  # a model that transforms its logits: the whole tensor, reduced in the same chunks
        full = model(input_ids=x).logits
        logits_at = lambda a, b: full[:, a:b].float()  # noqa: E731
    logp, mu, sigma = (torch.empty(B, T - 1, device=x.device) for _ in range(3))
    for a in range(0, T - 1, _LOGIT_CHUNK):
        b = min(a + _LOGIT_CHUNK, T - 1)
        z = logits_at(a, b)  # [B, b - a, V]: position p predicts token p + 1
        lse = z.logsumexp(-1, keepdim=True)
        p = (z - lse).exp_()
        logp[:, a:b] = (z.gather(-1, x[:, a + 1 : b + 1, None]) - lse).squeeze(-1)
        if torch.isneginf(z.amin()):  # a masked vocabulary entry: p = 0 there, so any finite logit serves
            z = torch.where(p > 0, z, 0.0)
        # log p = z - lse, so its mean is the p-mean of the logits minus lse and its variance theirs:
        # fewer passes over the vocabulary than with log p itself (140 -> 109 ms per batch of 32 at 617k)
        zbar = torch.linalg.vecdot(p, z)
        mu[:, a:b] = zbar - lse[..., 0]
        sigma[:, a:b] = torch.linalg.vecdot(p, (z - zbar[..., None]).square_()).sqrt()
    return logp, mu, sigma


def lowest_k_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k% lowest values of each row of values [N, T] -> [N]."""
    n = max(1, int(values.shape[1] * k / 100))
    return np.sort(values, axis=1)[:, :n].mean(1)


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def per_sample_scores(logp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, zlib_bytes: np.ndarray) -> dict[str, np.ndarray]:
    """Every attack but the reference, from per-token arrays [N, T-1] and zlib lengths [N]."""
    lp = logp.astype(np.float64)
    nll = -lp.sum(1)  # float64: sums of thousands of terms keep their digits
    out = {"nll": nll, "loss": nll / lp.shape[1]}
    out["zlib"] = out["loss"] / np.asarray(zlib_bytes, dtype=np.float64)
    for k in MIN_K:
        out[f"min_k_{k}"] = lowest_k_mean(lp, k)
    # sigma is 0 only for a one-hot prediction; its token is then the predicted one or has p = 0
    z = (lp - mu) / np.maximum(sigma.astype(np.float64), 1e-12)
    for k in MIN_K_PP:
        out[f"min_k_pp_{k}"] = lowest_k_mean(z, k)
    return out


def score_samples(model, samples: np.ndarray, batch_size: int, device, texts: list[str] | None = None) -> dict[str, np.ndarray]:
    """Attack scores of samples [N, T] under one model, in batches. texts: the decoded samples
    (for the zlib ratio; without them it is NaN). Returns per-sample arrays: nll (sum, nats),
    loss, zlib, min_k_<k>, min_k_pp_<k>."""
    parts = []
    for start in range(0, len(samples), batch_size):
        x = torch.from_numpy(np.asarray(samples[start : start + batch_size], dtype=np.int64)).to(device)
        parts.append([t.cpu().numpy() for t in token_statistics(model, x)])
    logp, mu, sigma = (np.concatenate(p) for p in zip(*parts))
    zlib_bytes = np.array([zlib_length(t) for t in texts], dtype=np.float64) if texts is not None else np.full(len(samples), np.nan)
    return per_sample_scores(logp, mu, sigma, zlib_bytes)


# ---------------------------------------------------------------------------------------------
# metrics


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR at an ROC operating point with FPR <= target (no interpolation)."""
    return float(tpr[fpr <= target + 1e-12].max())


def attack_metrics(member: np.ndarray, nonmember: np.ndarray, seed: int = 0, n_boot: int = N_BOOTSTRAP,
                   groups: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, tuple]:
    """Metrics of one attack from member scores oriented higher = member -> (metrics, (fpr, tpr)).
    groups: each sample's document (member labels, non-member labels), for a second interval that
    resamples documents (auroc_doc_lo / _hi; NaN without groups)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m, n = np.asarray(member, dtype=np.float64), np.asarray(nonmember, dtype=np.float64)
    y, s = np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n]
    fpr, tpr, _ = roc_curve(y, s)
    rng = np.random.default_rng(seed)
    boot = weighted_auroc(m, n, *(resample_counts(rng, n_boot, len(v)) for v in (m, n)))  # each side resampled
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out = {"auroc": float(roc_auc_score(y, s)), "auroc_lo": float(lo), "auroc_hi": float(hi)}
    doc_lo = doc_hi = np.nan
    if groups is not None:
        weights = [resample_counts(rng, n_boot, len(v), g) for v, g in zip((m, n), groups)]
        doc_lo, doc_hi = np.percentile(weighted_auroc(m, n, *weights), [2.5, 97.5])
    out |= {"auroc_doc_lo": float(doc_lo), "auroc_doc_hi": float(doc_hi)}
    for target in FPRS:
        out[f"tpr_at_{target:g}_fpr"] = tpr_at_fpr(fpr, tpr, target)
    return out, (fpr, tpr)
