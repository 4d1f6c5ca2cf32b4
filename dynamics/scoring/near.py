"""Near-verbatim memorization (Ippolito et al. 2023, REFERENCE section 6) from the greedy generations.

Per (sample, context, continuation c), between the greedy generation g = generated[:c] and the
true continuation t (both c tokens):
  edit_distance   token Levenshtein distance / c (rapidfuzz, C-backed; 0 = verbatim)
  lcs_len         longest common substring, in tokens (contiguous; rapidfuzz has only the
                  subsequence, so a vectorised dynamic programme)
  bleu4           BLEU-4 of g against the one reference t, as nltk's
                  `sentence_bleu([t], g, smoothing_function=SmoothingFunction().method1)`: uniform
                  weights, clipped n-gram precisions, a zero count replaced by epsilon 0.1, no
                  brevity penalty (equal lengths), 0 when no unigram matches. Computed for all
                  cells at once by counting (nltk is pure Python, 30x slower); the tests check
                  it against nltk.
  approx_memorized  bleu4 >= the threshold (0.75 by default, Ippolito et al.)
"""

from __future__ import annotations

import numpy as np

APPROX_BLEU = 0.75
_EPSILON = 0.1  # nltk SmoothingFunction().method1's epsilon


def bleu4(generated: np.ndarray, true: np.ndarray, continuations: list[int]) -> dict[int, np.ndarray]:
    """BLEU-4 of generated[:, :c] against true[:, :c] for each continuation length c: {c: [N]}.

    Clipped n-gram counts by counting: every n-gram gets an id unique to its (generation, truth)
    pair, and the clipped count of a pair is the sum over its ids of min(count in the generation,
    count in the truth), both counted with one bincount over all pairs at once."""
    N, C = generated.shape
    tokens = np.concatenate([generated, true]).astype(np.int64)  # generations, then truths: [2N, C]
    width = int(tokens.max()) + 1
    pair = np.concatenate([np.arange(N), np.arange(N)])[:, None]
    ids = pair * width + tokens  # unigram ids, unique per pair
    log_p = {c: np.zeros(N) for c in continuations}
    unigrams = {}
    for n in range(1, 5):
        if n > 1:  # extend each id by the next token, then renumber densely (ids stay far below 2^63)
            ids = ids[:, :-1] * width + tokens[:, n - 1 :]
        if ids.shape[1]:
            uniq, dense = np.unique(ids, return_inverse=True)
            ids = dense.reshape(ids.shape)
            pair_of = np.empty(len(uniq), dtype=np.int64)
            pair_of[ids] = pair
        for c in continuations:
            w = c - n + 1  # n-grams in a prefix of length c
            matched = np.zeros(N)
            if w >= 1:
                clipped = np.minimum(np.bincount(ids[:N, :w].ravel(), minlength=len(uniq)),
                                     np.bincount(ids[N:, :w].ravel(), minlength=len(uniq)))
                matched = np.bincount(pair_of, weights=clipped, minlength=N)
            log_p[c] += 0.25 * np.log(np.where(matched > 0, matched, _EPSILON) / max(1, w))
            if n == 1:
                unigrams[c] = matched
    return {c: np.where(unigrams[c] > 0, np.exp(log_p[c]), 0.0) for c in continuations}


def longest_common_substring(generated: np.ndarray, true: np.ndarray, continuations: list[int]) -> dict[int, np.ndarray]:
    """Longest common contiguous run of tokens of generated[:, :c] and true[:, :c]: {c: [N] int}."""
    N, C = generated.shape
    # token ids fit int32 (vocabularies are far smaller): half the bytes of int64 to compare
    eq = generated.astype(np.int32)[:, :, None] == true.astype(np.int32)[:, None, :]
    run = np.zeros((N, C, C), dtype=np.int16)  # length of the common run ending at (i, j)
    run[:, 0] = eq[:, 0]
    for i in range(1, C):
        run[:, i, 0] = eq[:, i, 0]
        run[:, i, 1:] = eq[:, i, 1:] * (run[:, i - 1, :-1] + 1)
    return {c: run[:, :c, :c].max((1, 2)) for c in continuations}


def _as_text(tokens: np.ndarray) -> list[str]:
    """Rows of token ids as strings of one code point per token, so that rapidfuzz takes its
    bit-parallel string path (4x faster than on lists of ints): id + 1 (no NUL, which numpy
    strips), skipping the surrogate range."""
    cp = tokens.astype(np.uint32) + 1
    cp = np.where(cp >= 0xD800, cp + 0x800, cp).astype(np.uint32)
    return np.ascontiguousarray(cp).view(f"<U{tokens.shape[1]}")[:, 0].tolist()


def edit_distance(generated: np.ndarray, true: np.ndarray, continuations: list[int]) -> dict[int, np.ndarray]:
    """Token Levenshtein distance / c per continuation length c: [N, C] -> {c: [N] float32}."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cpdist

    return {c: (np.asarray(cpdist(_as_text(generated[:, :c]), _as_text(true[:, :c]), scorer=Levenshtein.distance, workers=1),
                           dtype=np.float32) / c).astype(np.float32) for c in continuations}


def near_verbatim(generated: np.ndarray, true: np.ndarray, continuations: list[int], approx_bleu: float = APPROX_BLEU
                  ) -> dict[int, dict[str, np.ndarray]]:
    """Near-verbatim columns per continuation length, for generations and truths [N, C]."""
    generated, true = np.asarray(generated, dtype=np.int64), np.asarray(true, dtype=np.int64)
    bleu, lcs = bleu4(generated, true, continuations), longest_common_substring(generated, true, continuations)
    dist = edit_distance(generated, true, continuations)
    return {c: {"edit_distance": dist[c], "lcs_len": lcs[c].astype(np.int16), "bleu4": bleu[c].astype(np.float32),
                "approx_memorized": bleu[c] >= approx_bleu} for c in continuations}
