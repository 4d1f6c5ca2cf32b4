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
With sampling schemes, each chunk of the teacher-forced logits also yields the true tokens'
probabilities under every scheme (dynamics.scoring.extraction), so p_z costs no extra pass.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dynamics.errors import MemdynError
from dynamics.scoring.extraction import Extraction, Scheme
from dynamics.scoring.hf_internals import attention_implementation, cache_layers, output_cache

NEAR_TIE = 1e-4


@dataclass
class BatchResult:
    """Per (sample, context) results of one batch; arrays are [B, n_contexts(, C)]."""

    generated: np.ndarray  # int64 [B, K, C] greedy continuation at the largest continuation
    min_gap: np.ndarray  # float32 [B, K] smallest top-2 logit gap along the generation
    loss: np.ndarray  # float32 [B, K] mean NLL (nats) of the true continuation, teacher-forced
    context_loss: np.ndarray  # float32 [B, K] mean NLL (nats) of context tokens 1..k-1
    # float32 [S, B, K, C] per sampling scheme: log-probability of each true continuation token
    # (dynamics.scoring.extraction; NaN after a cell's first -inf); None without schemes
    logp: np.ndarray | None = None


def _greedy_and_gap(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and top-2 logit gaps of logits [..., V]; overwrites the maxima in place.

    max with indices, then the fast values-only amax once the maxima are masked: cheaper than
    topk(2) where it counts, at every decoding step (measured on a CPU). max returns the first
    maximal index, as argmax.
    """
    best, token = logits.max(-1)
    logits.scatter_(-1, token[..., None], -torch.inf)
    return token, best - logits.amax(-1)


_SHARED_PREFIX = "memdyn_shared_prefix"


class _SharedPrefixDecoding:
    """Attention state of G decoding items that continue true prefixes of B samples.

    Every item's prefix is a prefix of its sample's teacher-forced cache, and a sample has up to
    one item per context length (its slot), so the cache is read once per sample for all of its
    items instead of once per item (copying prefixes into a per-item cache made decoding on a CPU
    bound by reading the copies and their padding). Each sample's cache is extended by its items'
    generated tokens, interleaved by step: the key of slot s's token at step t sits at T + t*S + s
    (T the longest true prefix of any item; no position after it is ever read),
    so a step attends to one growing prefix, and a mask lets each item see its own true prefix and
    its own generated tokens. The prefix and generated scores share one softmax, exactly as in a
    single cache, in one fused scaled_dot_product_attention call per layer. transformers has no
    attention for this layout, hence the hand-written state.
    """

    def __init__(self, full_cache, rows: torch.Tensor, lengths: torch.Tensor, steps: torch.Tensor):
        """Items i = 0..G-1 continue sample rows[i] of the cache after lengths[i] true tokens, for
        steps[i] steps (non-increasing, so the items still decoding are always the first few)."""
        layers = cache_layers(full_cache)
        batch, H, _, D = layers[0][0].shape
        T = int(lengths.max())  # no item sees a true position beyond this: the rest is never read
        G, device, dtype = len(rows), rows.device, layers[0][0].dtype
        # only samples with items, the longest-decoding first: the samples still decoding at a
        # step are then the first few, and attention reads no other sample's cache
        longest = torch.zeros(batch, dtype=steps.dtype, device=device).scatter_reduce_(0, rows, steps, "amax")
        samples = torch.argsort(longest, descending=True, stable=True)[: int((longest > 0).sum())]
        B, rank = len(samples), rows.new_empty(batch)
        rank[samples] = torch.arange(B, device=device)
        rows = rank[rows]
        # per step: how many items and how many samples still decode (each a prefix)
        step_index = torch.arange(int(steps[0]), device=device)[:, None]
        self.items_active = (steps[None, :] > step_index).sum(1).tolist()
        self.samples_active = (longest[samples][None, :] > step_index).sum(1).tolist()
        # slot of each item among its sample's items (its rank there); flat = row * slots + slot
        order = torch.argsort(rows * G + torch.arange(G, device=device))
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(G, device=device) - torch.searchsorted(rows[order], rows[order])
        S = self.n_slots = int(slot.max()) + 1
        self.rows, self.slot, self.flat, self.lengths, self.T = rows, slot, rows * S + slot, lengths, T  # [G] each
        L = T + int(steps[0]) * S
        self.cache = []  # per layer: keys, values [B, H, L, D]
        for layer_keys, layer_values in layers:
            # zeros, not empty: a masked position still enters the product, and garbage there
            # could be NaN, which no mask removes
            keys, values = layer_keys.new_zeros(B, H, L, D), layer_values.new_zeros(B, H, L, D)
            keys[:, :, :T], values[:, :, :T] = layer_keys[:, :, :T].index_select(0, samples), layer_values[:, :, :T].index_select(0, samples)
            self.cache.append((keys, values))
        # additive mask [B * S, L]: item i sees the first lengths[i] positions of its sample, and
        # its generated positions once written; empty slots see nothing (uniform, ignored rows)
        masked = torch.finfo(dtype).min
        self.mask = torch.full((B * S, L), masked, dtype=dtype, device=device)
        self.mask[self.flat, :T] = torch.where(torch.arange(T, device=device)[None, :] < lengths[:, None], 0.0, masked).to(dtype)
        self.step, self.active, self.position = 0, 0, None

    def advance(self, step: int) -> int:
        """Start a step: the first n items (returned) each feed one token."""
        self.step, self.active = step, self.items_active[step]
        n = self.active
        self.position = self.T + step * self.n_slots + self.slot[:n]  # [n] cache position of the fed token
        self.mask[self.flat[:n], self.position] = 0.0
        return n

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
        """query, key, value [n, H, 1, D] of the current step's n active items -> output [n, 1, H, D]."""
        n, S, keys, values = self.active, self.n_slots, *self.cache[layer]
        B, (_, H, L, D) = self.samples_active[self.step], keys.shape  # the samples still decoding
        rows, flat = self.rows[:n], self.flat[:n]
        keys[rows, :, self.position] = key[:, :, 0]
        values[rows, :, self.position] = value[:, :, 0]
        end = self.T + (self.step + 1) * S  # nothing beyond this step's tokens is seen yet
        # the items of a sample side by side: [B * S, H, D] rows, viewed as [B, H, S, D]
        q = query.new_zeros(B * S, H, D).index_copy_(0, flat, query[:, :, 0]).view(B, S, H, D).transpose(1, 2)
        mask = self.mask.view(-1, 1, S, L)[:B, ..., :end]
        out = F.scaled_dot_product_attention(q, keys[:B, :, :end], values[:B, :, :end], attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).reshape(B * S, H, D).index_select(0, flat)[:, None]  # [n, 1, H, D]


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling, decode_state=None, **kwargs):
    """transformers attention-interface entry point for _SharedPrefixDecoding."""
    if decode_state is None:
        raise MemdynError(f"{type(module).__name__} does not pass attention keyword arguments through "
                          "(transformers < 5 model code?); memdyn's scorer needs it for cached decoding")
    return decode_state.attend(module.layer_idx, query, key, value, scaling), None


def _decode(model, state: _SharedPrefixDecoding, first_tokens: torch.Tensor):
    """Greedy-decode each item of a decoding state for its number of steps.

    Item i continues its sample after its true prefix of lengths[i] tokens, with first_tokens[i]
    (the first mismatching prediction) at position lengths[i]. Items are ordered by steps, longest
    first: the items still decoding at step t are then the first n(t), and a step costs what they
    need, not what the longest item needs. Returns tokens [G, max steps] and the top-2 logit gaps
    of those predictions (valid up to each item's steps).
    """
    G, total, device = len(first_tokens), len(state.items_active), first_tokens.device
    token = first_tokens  # [G]
    out_tokens = torch.empty(G, total, dtype=torch.long, device=device)
    out_gaps = torch.empty(G, total, dtype=torch.float32, device=device)
    with attention_implementation(model, _SHARED_PREFIX, _shared_prefix_attention):
        for t in range(total):
            n = state.advance(t)
            logits = model(
                input_ids=token[:n, None], position_ids=(state.lengths[:n] + t)[:, None], use_cache=False, decode_state=state,
            ).logits[:, -1].float()  # [n, V]
            token, out_gaps[:n, t] = _greedy_and_gap(logits)
            out_tokens[:n, t] = token
    return out_tokens, out_gaps


# positions whose logits are reduced together: [B, 8, V] fp32 is 2 MiB at B=32, V=2048, small
# enough to stay in a core's cache between the reductions. With sampling schemes, 16: the
# extraction's fixed cost per chunk then counts half as often (more rows are computed, as cells
# that die inside a chunk are computed to its end); 617k on a CPU, over greedy scoring alone:
# batch 16, +19.4 ms per batch with 8 positions, +15.8 with 16; batch 32, +29.6 and +26.2
_LOGIT_CHUNK = 8
_EXTRACTION_CHUNK = 16
_plain_head: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _has_plain_head(model) -> bool:
    """Whether the model's logits are its output embedding applied to its base model's last
    hidden state (true of GPT-NeoX, Llama, GPT-2; not of models that scale or cap logits).
    Checked once per model on a few tokens."""
    if model not in _plain_head:
        head = model.get_output_embeddings()
        device = next(model.parameters()).device
        x = torch.arange(4, device=device)[None] % model.config.vocab_size
        _plain_head[model] = head is not None and torch.equal(
            model(input_ids=x).logits.float(), head(model.base_model(input_ids=x).last_hidden_state).float()
        )
    return _plain_head[model]


def _teacher_forced(model, x: torch.Tensor, extraction: Extraction | None = None):
    """One teacher-forced pass over x [B, T] -> (KV cache, NLL of tokens 1..T-1 [B, T-1],
    greedy prediction [B, T] and top-2 logit gap [B, T] at every position). Each chunk of logits
    also feeds `extraction` (the true tokens' probabilities under sampling schemes).

    The [B, T, V] logits are made and reduced a few positions at a time: made at once they are
    tens of MB, and each reduction over them went to main memory (a third of the pass on a CPU).
    """
    B, T = x.shape
    if _has_plain_head(model):
        out = model.base_model(input_ids=x, use_cache=True)
        head, hidden = model.get_output_embeddings(), out.last_hidden_state
        logits_at = lambda a, b: head(hidden[:, a:b]).float()  # noqa: E731
    else:
        out = model(input_ids=x, use_cache=True)
        logits_at = lambda a, b: out.logits[:, a:b].float()  # noqa: E731
    nll = torch.empty(B, T - 1, device=x.device)
    pred = torch.empty(B, T, dtype=torch.long, device=x.device)
    gap = torch.empty(B, T, device=x.device)
    chunk = _LOGIT_CHUNK if extraction is None else _EXTRACTION_CHUNK
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        logits = logits_at(a, b)  # [B, b - a, V]; logits[:, p] predicts position a + p + 1
        e = min(b, T - 1)  # the last position predicts nothing inside x
        nll[:, a:e] = F.cross_entropy(
            logits[:, : e - a].flatten(0, 1), x[:, a + 1 : e + 1].flatten(), reduction="none"
        ).view(B, e - a)
        if extraction is not None and e > a:
            extraction.add(a, logits[:, : e - a], x[:, a + 1 : e + 1], nll[:, a:e])
        pred[:, a:b], gap[:, a:b] = _greedy_and_gap(logits)  # last: it overwrites the maxima
    return output_cache(out), nll, pred, gap


@torch.inference_mode()
def score_batch(model, tokens: torch.Tensor, contexts: list[int], continuation: int, schemes: list[Scheme] = ()) -> BatchResult:
    """Greedy continuations of `continuation` tokens after every context length, for a batch,
    and the true continuations' per-token log-probabilities under each sampling scheme.

    tokens: [B, >= max(contexts) + continuation] true samples (on the model's device).
    """
    B, C = tokens.size(0), continuation
    T = max(contexts) + C
    x = tokens[:, :T]
    extraction = Extraction(list(schemes), B, T, contexts, C, x.device) if schemes else None
    cache, nll, pred, gap = _teacher_forced(model, x, extraction)

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
    # steps, longest first, so that finished items leave the decoding
    rows, ctx_idx, m = (torch.cat(parts) for parts in zip(*diverged))  # [G] each
    order = torch.argsort((m * K + ctx_idx) * B + rows)  # by m, then context, then row
    rows, ctx_idx, m = rows[order], ctx_idx[order], m[order]
    if len(rows):
        lengths = torch.tensor(contexts, device=x.device)[ctx_idx] + m
        state = _SharedPrefixDecoding(cache, rows, lengths, C - 1 - m)
        del cache  # the state holds its own copy of the prefixes: free the pass's cache while decoding
        new_tokens, new_gaps = _decode(model, state, generated[rows, ctx_idx, m])
        # item i's decoded tokens fill positions m_i + 1 .. C - 1; its first C - 1 - m_i gaps are valid
        positions = torch.arange(C, device=x.device)[None, :]  # [1, C]
        src = positions - m[:, None] - 1  # [G, C] index into new_tokens
        decoded = new_tokens.gather(1, src.clamp(0, new_tokens.size(1) - 1))
        generated[rows, ctx_idx] = torch.where(src >= 0, decoded, generated[rows, ctx_idx])
        valid = positions[:, : new_gaps.size(1)] < (C - 1 - m)[:, None]
        min_gap[rows, ctx_idx] = torch.minimum(min_gap[rows, ctx_idx], torch.where(valid, new_gaps, torch.inf).min(1).values)
    return BatchResult(
        generated.cpu().numpy(), min_gap.cpu().numpy(), loss.cpu().numpy(), context_loss.cpu().numpy(),
        extraction.result() if extraction is not None else None,
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
def reference_scores(model, samples: np.ndarray, k: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The plain reference: transformers `generate`, greedy, for one (k, c) cell of samples [n, >= k]
    (all contexts have length k: no padding).

    Returns (generated tokens [n, c], smallest top-2 logit gap over each row's generated positions [n]).
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(samples, dtype=np.int64)[:, :k], device=device)
    out = model.generate(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=c, min_new_tokens=0, do_sample=False,
        eos_token_id=None, pad_token_id=model.config.pad_token_id, output_scores=True, return_dict_in_generate=True,
    )
    top2 = torch.stack(out.scores, 1).float().topk(2, -1).values  # [n, c, 2]
    return out.sequences[:, k:].cpu().numpy(), (top2[..., 0] - top2[..., 1]).amin(1).cpu().numpy()
