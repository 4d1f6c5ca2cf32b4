"""Memorization scores over a grid of context and continuation lengths (REFERENCE section 1).

For a sample s, context length k and continuation length c: greedy-decode c tokens from s[0:k];
score = matches / c where matches counts positions i < c with generated[i] == s[k + i];
prefix_len is the length of the longest exactly matching prefix.

Only the work that is needed is done:
  * one greedy generation per (sample, k) at the largest continuation C; a shorter continuation's
    generation is a prefix of it, so every (k, c) cell follows from it;
  * one teacher-forced forward pass over s[0:max(k) + C] serves every k at once: while the
    generation still equals the true text, greedy decoding *is* the teacher-forced argmax, so
    that pass yields the matching prefix, the first mismatching token and the loss of the true
    continuation;
  * KV-cached greedy decoding runs only after the first mismatch, reusing that pass's cache
    (valid up to the mismatch), for all (sample, k) pairs of a batch together. Their prefixes
    differ in length, so each cache is right-aligned, the padding is masked and positions are
    passed explicitly: no padding token ever enters the computation.
Near-ties (top-2 logit gap below 1e-4 at a generated position) are recorded: there, any two
correct implementations may legitimately differ in float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEAR_TIE = 1e-4


@dataclass
class BatchResult:
    """Per (sample, context) results of one batch; arrays are [B, n_contexts(, C)]."""

    generated: np.ndarray  # int64 [B, K, C] greedy continuation at the largest continuation
    min_gap: np.ndarray  # float32 [B, K] smallest top-2 logit gap along the generation
    loss: np.ndarray  # float32 [B, K] mean NLL (nats) of the true continuation, teacher-forced
    context_loss: np.ndarray  # float32 [B, K] mean NLL (nats) of context tokens 1..k-1


def _gather_prefixes(tensor: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Right-align tensor[rows[i], :, :lengths[i]] into [G, H, max(lengths), D]; padding is zeros."""
    width = int(lengths.max())
    src = torch.arange(width, device=tensor.device)[None, :] - (width - lengths)[:, None]  # [G, W]
    valid = src >= 0
    picked = tensor[rows]  # [G, H, T, D]
    index = src.clamp(min=0)[:, None, :, None].expand(-1, picked.size(1), -1, picked.size(3))
    out = picked.gather(2, index)  # [G, H, W, D]
    return out * valid[:, None, :, None].to(out.dtype)


@torch.no_grad()
def _decode(model, full_cache, rows, lengths, first_tokens, steps: int):
    """Greedy-decode `steps` tokens for G items that share the batch's teacher-forced cache.

    Item i continues sample rows[i] after its true prefix of lengths[i] tokens, with first_tokens[i]
    (the first mismatching prediction) at position lengths[i]. Returns tokens [G, steps] and the
    top-2 logit gaps [G, steps] of those predictions.
    """
    from transformers import StaticCache

    G, width = len(rows), int(lengths.max())
    # a preallocated cache written in place: a growing cache re-copies every layer's keys and
    # values at each step, which costs about as much as the step's matrix products on a CPU
    cache = StaticCache(config=model.config, max_cache_len=width + steps)
    for i, layer in enumerate(full_cache.layers):
        cache.update(_gather_prefixes(layer.keys, rows, lengths), _gather_prefixes(layer.values, rows, lengths), i)
    pad = torch.arange(width + steps, device=lengths.device)[None, :] < (width - lengths)[:, None]
    mask = (~pad).long()  # [G, width + steps]; slots not yet written are hidden by causality
    token = first_tokens  # [G]
    out_tokens = torch.empty(G, steps, dtype=torch.long, device=rows.device)
    out_gaps = torch.empty(G, steps, dtype=torch.float32, device=rows.device)
    for t in range(steps):
        logits = model(
            input_ids=token[:, None], past_key_values=cache, attention_mask=mask,
            position_ids=(lengths + t)[:, None], use_cache=True,
        ).logits[:, -1].float()  # [G, V]
        top2 = logits.topk(2, dim=-1).values
        token = logits.argmax(-1)
        out_tokens[:, t] = token
        out_gaps[:, t] = top2[:, 0] - top2[:, 1]
    return out_tokens, out_gaps


@torch.no_grad()
def score_batch(model, tokens: torch.Tensor, contexts: list[int], continuation: int, decode_batch: int | None = None) -> BatchResult:
    """Greedy continuations of `continuation` tokens after every context length, for a batch.

    tokens: [B, >= max(contexts) + continuation] true samples (on the model's device).
    decode_batch: most (sample, context) items decoded together (default: all of the batch's).
    """
    B, C = tokens.size(0), continuation
    T = max(contexts) + C
    x = tokens[:, :T]
    out = model(input_ids=x, use_cache=True)
    logits = out.logits.float()  # [B, T, V]; logits[:, p] predicts position p + 1
    pred = logits.argmax(-1)  # [B, T]
    top2 = logits.topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]  # [B, T]
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None])[..., 0]  # [B, T-1]
    del logits, top2

    K = len(contexts)
    generated = torch.empty(B, K, C, dtype=torch.long, device=x.device)
    min_gap = torch.empty(B, K, dtype=torch.float32, device=x.device)
    loss = torch.empty(B, K, dtype=torch.float32, device=x.device)
    context_loss = torch.empty(B, K, dtype=torch.float32, device=x.device)
    todo = []  # (row, context index, prefix length m) pairs that diverge before the last position
    for j, k in enumerate(contexts):
        forced = pred[:, k - 1 : k - 1 + C]  # [B, C] teacher-forced greedy predictions
        match = forced == x[:, k : k + C]
        m = torch.where(match.all(1), C, (~match).int().argmax(1))  # first mismatch, or C
        generated[:, j] = forced  # correct up to and including position m
        loss[:, j] = nll[:, k - 1 : k - 1 + C].mean(1)
        context_loss[:, j] = nll[:, : k - 1].mean(1) if k > 1 else 0.0
        forced_gap = gap[:, k - 1 : k - 1 + C]
        upto = torch.arange(C, device=x.device)[None, :] <= m[:, None]
        min_gap[:, j] = torch.where(upto, forced_gap, torch.inf).min(1).values
        for row in torch.nonzero(m < C - 1).flatten().tolist():
            todo.append((row, j, int(m[row])))

    # decode the diverged items together: one decoding step costs about the same for B or B*K
    # items (per-step overhead dominates on CPU; memory-bound on GPU), so by default all of them
    # form one group; with a smaller decode_batch, groups hold items of similar remaining length
    todo.sort(key=lambda item: (item[2], item[1], item[0]))
    decode_batch = decode_batch or max(1, len(todo))
    for start in range(0, len(todo), decode_batch):
        group = todo[start : start + decode_batch]
        rows = torch.tensor([g[0] for g in group], device=x.device)
        ctx = torch.tensor([contexts[g[1]] for g in group], device=x.device)
        m = torch.tensor([g[2] for g in group], device=x.device)
        steps = C - 1 - int(m.min())
        first = generated[rows, torch.tensor([g[1] for g in group], device=x.device), m]
        new_tokens, new_gaps = _decode(model, out.past_key_values, rows, ctx + m, first, steps)
        for i, (row, j, mi) in enumerate(group):
            n = C - 1 - mi
            generated[row, j, mi + 1 :] = new_tokens[i, :n]
            min_gap[row, j] = min(float(min_gap[row, j]), float(new_gaps[i, :n].min()))
    return BatchResult(
        generated.cpu().numpy(), min_gap.cpu().numpy(), loss.cpu().numpy(), context_loss.cpu().numpy()
    )


def cell_scores(generated: np.ndarray, true: np.ndarray, continuations: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(matches, prefix_len) per continuation length, from generations [..., C] and truth [..., C]."""
    match = generated == true
    out = {}
    for c in continuations:
        mc = match[..., :c]
        prefix = np.where(mc.all(-1), c, np.argmin(mc, axis=-1))
        out[c] = (mc.sum(-1), prefix)
    return out


@torch.no_grad()
def reference_scores(model, sample: np.ndarray, k: int, c: int) -> tuple[np.ndarray, float]:
    """The plain reference: transformers `generate`, greedy, one sample, one (k, c) cell.

    Returns (generated tokens [c], smallest top-2 logit gap over the generated positions).
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(sample[:k], dtype=np.int64), device=device)[None]
    out = model.generate(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=c, min_new_tokens=0, do_sample=False,
        eos_token_id=None, pad_token_id=model.config.pad_token_id, output_scores=True, return_dict_in_generate=True,
    )
    scores = torch.stack(out.scores, 1)[0].float()  # [c, V]
    top2 = scores.topk(2, -1).values
    return out.sequences[0, k:].cpu().numpy(), float((top2[:, 0] - top2[:, 1]).min())
