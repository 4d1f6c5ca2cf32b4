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
    (valid up to the mismatch), for all (sample, k) pairs of a batch together. Each item attends
    to the first (k + mismatch) positions of its sample's cache, read once for all of the
    sample's items, and to its own generated tokens; positions are passed explicitly, so no
    padding token ever enters the computation. Items leave the decoding when they are done.
Near-ties (top-2 logit gap below 1e-4 at a generated position) are recorded: there, any two
correct implementations may legitimately differ in float rounding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.errors import MemdynError

NEAR_TIE = 1e-4


@dataclass
class BatchResult:
    """Per (sample, context) results of one batch; arrays are [B, n_contexts(, C)]."""

    generated: np.ndarray  # int64 [B, K, C] greedy continuation at the largest continuation
    min_gap: np.ndarray  # float32 [B, K] smallest top-2 logit gap along the generation
    loss: np.ndarray  # float32 [B, K] mean NLL (nats) of the true continuation, teacher-forced
    context_loss: np.ndarray  # float32 [B, K] mean NLL (nats) of context tokens 1..k-1


def _greedy_and_gap(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and top-2 logit gaps of logits [..., V]; overwrites the maxima in place.

    Two max reductions instead of argmax + topk(2): topk's partial sort costs about as much as
    both, and this runs at every decoding step. max returns the first maximal index, as argmax.
    """
    best, token = logits.max(-1)
    logits.scatter_(-1, token[..., None], -torch.inf)
    return token, best - logits.max(-1).values


_SHARED_PREFIX = "memdyn_shared_prefix"


class _SharedPrefixDecoding:
    """Attention state of G decoding items that continue true prefixes of B samples.

    Every item's prefix is a prefix of its sample's teacher-forced cache, and a sample has up to
    one item per context length, so the cache is read once per sample for all of its items
    instead of once per item (copying prefixes into a per-item cache made decoding on a CPU bound
    by reading the copies and their padding). The keys and values of generated tokens go to small
    per-item buffers. transformers has no attention for this layout, hence the hand-written one:
    the prefix and generated scores share one softmax, exactly as in a single cache.
    """

    def __init__(self, full_cache, rows: torch.Tensor, lengths: torch.Tensor, steps: int):
        self.prefix = [(layer.keys, layer.values) for layer in full_cache.layers]  # [B, H, T, D] each
        B, H, T, D = self.prefix[0][0].shape
        G = len(rows)
        # slot of each item among its sample's items (its rank there); flat = row * slots + slot
        order = torch.argsort(rows * G + torch.arange(G, device=rows.device))
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(G, device=rows.device) - torch.searchsorted(rows[order], rows[order])
        self.n_slots = int(slot.max()) + 1
        self.flat = rows * self.n_slots + slot  # [G]
        dtype = self.prefix[0][0].dtype
        # additive mask [B, 1, slots, T]: an item sees the first lengths[i] positions of its sample
        seen = torch.arange(T, device=rows.device)[None, :] < lengths[:, None]  # [G, T]
        mask = torch.full((B * self.n_slots, T), torch.finfo(dtype).min, dtype=dtype, device=rows.device)
        mask[self.flat] = torch.where(seen, 0.0, torch.finfo(dtype).min).to(dtype)
        self.prefix_mask = mask.view(B, self.n_slots, T)[:, None]
        self.generated = [(torch.empty(G, H, steps, D, dtype=dtype, device=rows.device),
                           torch.empty(G, H, steps, D, dtype=dtype, device=rows.device)) for _ in self.prefix]
        self.step, self.active = 0, G  # the current step and the items still decoding (a prefix)

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
        """query, key, value [n, H, 1, D] of the current step's n active items -> output [n, 1, H, D]."""
        t, n = self.step, self.active
        prefix_k, prefix_v = self.prefix[layer]  # [B, H, T, D]
        gen_k, gen_v = self.generated[layer][0][:n], self.generated[layer][1][:n]  # [n, H, steps, D]
        gen_k[:, :, t] = key[:, :, 0]
        gen_v[:, :, t] = value[:, :, 0]
        B, H, T, D = prefix_k.shape
        S, flat = self.n_slots, self.flat[:n]
        # the items of a sample side by side: [B * S, H, D] rows, viewed as [B, H, S, D]
        q = query.new_zeros(B * S, H, D).index_copy_(0, flat, query[:, :, 0])
        q = q.view(B, S, H, D).transpose(1, 2)
        prefix_scores = torch.matmul(q, prefix_k.transpose(2, 3)) * scaling + self.prefix_mask  # [B, H, S, T]
        prefix_scores = prefix_scores.transpose(1, 2).reshape(B * S, H, T).index_select(0, flat)  # [n, H, T]
        gen_scores = torch.matmul(query, gen_k[:, :, : t + 1].transpose(2, 3))[:, :, 0] * scaling  # [n, H, t+1]
        p = torch.cat([prefix_scores, gen_scores], -1).softmax(-1, dtype=torch.float32).to(query.dtype)
        p_prefix = query.new_zeros(B * S, H, T).index_copy_(0, flat, p[..., :T]).view(B, S, H, T).transpose(1, 2)
        out = torch.matmul(p_prefix, prefix_v).transpose(1, 2).reshape(B * S, H, D).index_select(0, flat)  # [n, H, D]
        out = out + torch.matmul(p[:, :, None, T:], gen_v[:, :, : t + 1])[:, :, 0]
        return out[:, None]  # [n, 1, H, D], the layout attention functions return


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling, decode_state=None, **kwargs):
    """transformers attention-interface entry point for _SharedPrefixDecoding."""
    if decode_state is None:
        raise MemdynError(f"{type(module).__name__} does not pass attention keyword arguments through "
                          "(transformers < 5 model code?); memdyn's scorer needs it for cached decoding")
    return decode_state.attend(module.layer_idx, query, key, value, scaling), None


@contextmanager
def _attention_implementation(model, name: str):
    """Route the model's attention through a registered implementation for the duration of a decode."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def _decode(model, full_cache, rows, lengths, first_tokens, steps: torch.Tensor):
    """Greedy-decode steps[i] tokens for each of G items that share the batch's teacher-forced cache.

    Item i continues sample rows[i] after its true prefix of lengths[i] tokens, with first_tokens[i]
    (the first mismatching prediction) at position lengths[i]. steps must be non-increasing: the
    items still decoding at step t are then the first n(t), and a step costs what they need, not
    what the longest item needs. Returns tokens [G, max steps] and the top-2 logit gaps of those
    predictions (valid up to each item's steps).
    """
    from transformers import AttentionInterface

    AttentionInterface.register(_SHARED_PREFIX, _shared_prefix_attention)
    G, total = len(rows), int(steps[0])
    state = _SharedPrefixDecoding(full_cache, rows, lengths, total)
    active = (steps[None, :] > torch.arange(total, device=steps.device)[:, None]).sum(1).tolist()  # per step
    token = first_tokens  # [G]
    out_tokens = torch.empty(G, total, dtype=torch.long, device=rows.device)
    out_gaps = torch.empty(G, total, dtype=torch.float32, device=rows.device)
    with _attention_implementation(model, _SHARED_PREFIX):
        for t, n in enumerate(active):
            state.step, state.active = t, n
            logits = model(
                input_ids=token[:n, None], position_ids=(lengths[:n] + t)[:, None], use_cache=False, decode_state=state,
            ).logits[:, -1].float()  # [n, V]
            token, out_gaps[:n, t] = _greedy_and_gap(logits)
            out_tokens[:n, t] = token
    return out_tokens, out_gaps


@torch.inference_mode()
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
    # NLL = logsumexp - true logit: one reduction, no [B, T, V] log-probability tensor
    nll = logits[:, :-1].logsumexp(-1) - logits[:, :-1].gather(-1, x[:, 1:, None])[..., 0]  # [B, T-1]
    pred, gap = _greedy_and_gap(logits)  # [B, T] each
    del logits

    K = len(contexts)
    generated = torch.empty(B, K, C, dtype=torch.long, device=x.device)
    min_gap = torch.empty(B, K, dtype=torch.float32, device=x.device)
    loss = torch.empty(B, K, dtype=torch.float32, device=x.device)
    context_loss = torch.empty(B, K, dtype=torch.float32, device=x.device)
    diverged = []  # per context: (rows, prefix length m) of the items that diverge before the last position
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
        rows = torch.nonzero(m < C - 1).flatten()
        diverged.append((rows, torch.full_like(rows, j), m[rows]))

    # decode the diverged items together (a step's fixed overhead is shared) in order of remaining
    # steps, longest first, so that finished items leave the decoding; with a smaller decode_batch,
    # groups hold items of similar remaining length
    rows, ctx_idx, m = (torch.cat(parts) for parts in zip(*diverged))  # [G] each
    order = torch.argsort((m * K + ctx_idx) * B + rows)  # by m, then context, then row
    rows, ctx_idx, m = rows[order], ctx_idx[order], m[order]
    lengths = torch.tensor(contexts, device=x.device)[ctx_idx] + m
    positions = torch.arange(C, device=x.device)[None, :]  # [1, C]
    decode_batch = decode_batch or max(1, len(rows))
    for start in range(0, len(rows), decode_batch):
        g = slice(start, start + decode_batch)
        r, j, mg = rows[g], ctx_idx[g], m[g]
        new_tokens, new_gaps = _decode(model, out.past_key_values, r, lengths[g], generated[r, j, mg], C - 1 - mg)
        # item i's decoded tokens fill positions m_i + 1 .. C - 1; its first C - 1 - m_i gaps are valid
        src = positions - mg[:, None] - 1  # [G, C] index into new_tokens
        decoded = new_tokens.gather(1, src.clamp(0, new_tokens.size(1) - 1))
        generated[r, j] = torch.where(src >= 0, decoded, generated[r, j])
        valid = positions[:, : new_gaps.size(1)] < (C - 1 - mg)[:, None]
        min_gap[r, j] = torch.minimum(min_gap[r, j], torch.where(valid, new_gaps, torch.inf).min(1).values)
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


@torch.inference_mode()
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
