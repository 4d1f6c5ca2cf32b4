"""Bit-level capacity: how many bits a model memorized (Morris et al. 2025).

- bits:       per-token log-probs -> NLL bits, memorized bits, unintended memorization
- synthetic:  GPT-2 models on uniformly random tokens, trained to saturation -> bits/param
- membership: loss-threshold membership inference (F1, AUROC) and its sigmoid scaling law
"""

from dynamics.capacity.bits import (
    memorized_bits,
    model_token_logprobs,
    nll_bits,
    sequence_entropy_bits,
    token_logprobs,
    unintended_bits,
)
from dynamics.capacity.membership import (
    AttackResult,
    SigmoidFit,
    fit_paper_rows,
    fit_sigmoid,
    loss_threshold_attack,
    plot_sigmoid_fit,
    sigmoid_f1,
)

__all__ = [
    "AttackResult", "SigmoidFit", "fit_paper_rows", "fit_sigmoid", "loss_threshold_attack",
    "memorized_bits", "model_token_logprobs", "nll_bits", "plot_sigmoid_fit", "sequence_entropy_bits",
    "sigmoid_f1", "token_logprobs", "unintended_bits",
]
