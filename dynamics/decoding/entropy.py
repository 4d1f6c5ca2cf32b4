"""Entropy of next-token distributions, and the one forward pass that yields it with hidden states.

Alignment used everywhere in memdyn's decoding dynamics: the entropy at position p is the entropy
of the distribution that PREDICTS token p, i.e. of softmax(logits[p - 1]). So the first
continuation position (p = k) holds the distribution the first greedy token was drawn from; p = 0
has no prediction (NaN). Hidden states are kept at their INPUT position: hidden[p] is the state
computed at token p (it produces the distribution of token p + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy of softmax(logits) over the last axis: [..., V] -> [...]."""
    return torch.distributions.Categorical(logits=logits.float()).entropy()


@dataclass
class PassResult:
    entropy: np.ndarray  # float32 [B, T] nats, predictive alignment (entropy[:, 0] = NaN)
    top1: np.ndarray  # bool [B, T]: token p is the argmax of its predictive distribution (False at p = 0)
    surprisal: np.ndarray  # float32 [B, T] nats, -log p(token p), predictive alignment (NaN at p = 0)
    hidden: dict[int, np.ndarray]  # layer -> float32 [B, T, d], input alignment


@torch.no_grad()
def forward_pass(model, ids: torch.Tensor, layers: list[int]) -> PassResult:
    """One teacher-forced pass over ids [B, T] (context + greedy continuation). With causal
    attention the logits at every continuation position equal those of step-by-step greedy decoding,
    so one pass gives the generation-time entropies too."""
    out = model(input_ids=ids, output_hidden_states=True)
    logits = out.logits.float()  # [B, T, V]; logits[:, p] predicts token p + 1
    B, T = ids.shape
    entropy = torch.full((B, T), float("nan"), device=ids.device)
    entropy[:, 1:] = entropy_nats(logits[:, :-1])
    top1 = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
    top1[:, 1:] = logits[:, :-1].argmax(-1) == ids[:, 1:]
    surprisal = torch.full((B, T), float("nan"), device=ids.device)
    surprisal[:, 1:] = logits[:, :-1].logsumexp(-1) - logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    hidden = {layer: out.hidden_states[layer].float().cpu().numpy() for layer in layers}  # each [B, T, d]
    return PassResult(entropy.cpu().numpy(), top1.cpu().numpy(), surprisal.cpu().numpy(), hidden)
