"""Bit accounting: from per-token log-probabilities to NLL bits and memorized bits.

Shared by the synthetic capacity sweep and the text (unintended memorization) part.
All functions work on natural-log probabilities, the unit torch's log_softmax returns, and
convert to bits once, at the end. Nothing here trains a model, so it is testable with
hand-built logits.

Conventions (see Morris et al. 2025, shared/REFERENCE.md section 3):
- NLL_bits(x) = -sum_t log2 p(x_t | x_<t) over the scored positions of x.
- memorized_bits(x) = max(0, H(x) - NLL_bits(x)) for synthetic data, H(x) known exactly.
- unintended_bits(x) = max(0, log2 p_t(x) - log2 p_r(x)) for text, r a reference model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability (nats) the model gave each next token.

    logits: (B, T, V) from a causal LM on input_ids (B, T). Position t predicts token t+1,
    so the result is (B, T-1): the first token has no context and gets no score.
    """
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V); fp32 for exact sums
    target = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    return logp.gather(-1, target).squeeze(-1)  # (B, T-1)


def nll_bits(logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample negative log-likelihood in bits. logprobs: (B, T) in nats -> (B,)."""
    lp = logprobs.double()  # sums of thousands of terms: keep the rounding out of the bits
    if mask is not None:
        lp = lp * mask.to(lp.dtype)
    return -lp.sum(dim=-1) / LN2


def sequence_entropy_bits(n_tokens: int, vocab_size: int) -> float:
    """H(x) of a sequence of n_tokens drawn uniformly and independently from vocab_size."""
    return n_tokens * math.log2(vocab_size)


def memorized_bits(logprobs: torch.Tensor, entropy_bits: float | torch.Tensor) -> torch.Tensor:
    """Per-sample memorized bits max(0, H(x) - NLL_bits(x)). logprobs: (B, T) nats -> (B,).

    entropy_bits is H(x) of the scored tokens only (e.g. (S-1) * log2 V when the first token,
    which has no context, is not scored).
    """
    return (entropy_bits - nll_bits(logprobs)).clamp(min=0.0)


def unintended_bits(logprobs_target: torch.Tensor, logprobs_ref: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample unintended memorization max(0, log2 p_t(x) - log2 p_r(x)).

    logprobs_*: (B, T) per-token log-probs (nats) of the same tokens under the target model t
    and the reference model r -> (B,) bits. The reference stands in for generalisation, so
    what t knows beyond r about x counts as memorized.
    """
    return (nll_bits(logprobs_ref, mask) - nll_bits(logprobs_target, mask)).clamp(min=0.0)


@torch.no_grad()
def model_token_logprobs(model, input_ids: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Token log-probs (nats) of input_ids (N, T) under a causal LM, in batches -> (N, T-1) fp32."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[i:i + batch_size]
        out.append(token_logprobs(model(ids).logits, ids).float().cpu())
    model.train(was_training)
    return torch.cat(out)
