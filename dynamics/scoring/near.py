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
                  cells and all c at once with array operations (nltk is pure Python, a few
                  hundred times slower); the tests check it against nltk.
  approx_memorized  bleu4 >= the threshold (0.75 by default, Ippolito et al.)
Every prefix length is read off one computation at the largest continuation, like the greedy score.
"""

from __future__ import annotations

import numpy as np

APPROX_BLEU = 0.75
_EPSILON = 0.1  # nltk SmoothingFunction().method1's epsilon


def _ngram_equal(eq: np.ndarray, n: int) -> np.ndarray:
    """[N, C-n+1, C-n+1]: whether the n-grams starting at i (rows) and j (columns) are equal,
    from the token equality eq [N, C, C]."""
    out = eq[:, : eq.shape[1] - n + 1, : eq.shape[2] - n + 1].copy()
    for t in range(1, n):
        out &= eq[:, t : eq.shape[1] - n + 1 + t, t : eq.shape[2] - n + 1 + t]
    return out


def bleu4(generated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """BLEU-4 of every prefix: [N, C] generations and truths -> [N, C] (column c-1 = length c)."""
    N, C = generated.shape
    eq = generated[:, :, None] == true[:, None, :]  # [N, C, C] hypothesis i vs reference j
    self_eq = generated[:, :, None] == generated[:, None, :]
    log_p = np.zeros((N, C))
    unigram_matches = None
    for n in range(1, 5):
        lengths = np.arange(1, C + 1)  # prefix length c, column c-1
        matched = np.zeros((N, C))
        if n <= C:
            E, H = _ngram_equal(eq, n), _ngram_equal(self_eq, n)
            m = C - n + 1
            # clipped count = sum over hypothesis n-grams i <= c-n of [its rank among equal earlier
            # hypothesis n-grams < the count of equal reference n-grams j <= c-n]
            rank = np.triu(H, 1).sum(1)  # [N, m]: equal n-grams before i
            ref_count = np.cumsum(E, 2, dtype=np.int32)  # [N, m(i), m(j)]: equal reference n-grams up to j
            upto = np.arange(m)[:, None] <= np.arange(m)[None, :]  # i <= J
            matched[:, n - 1 :] = ((rank[:, :, None] < ref_count) & upto).sum(1)
        total = np.maximum(1, lengths - n + 1)
        p = np.where(matched > 0, matched, _EPSILON) / total
        log_p += 0.25 * np.log(p)
        if n == 1:
            unigram_matches = matched
    return np.where(unigram_matches > 0, np.exp(log_p), 0.0)


def longest_common_substring(generated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Longest common contiguous run of tokens of every prefix pair: [N, C] -> [N, C] int."""
    N, C = generated.shape
    eq = generated[:, :, None] == true[:, None, :]
    run = np.zeros((N, C, C), dtype=np.int16)  # common run ending at (i, j)
    run[:, 0] = eq[:, 0]
    for i in range(1, C):
        run[:, i, 0] = eq[:, i, 0]
        run[:, i, 1:] = eq[:, i, 1:] * (run[:, i - 1, :-1] + 1)
    # the longest run inside the square [0, c) x [0, c): running maxima along both axes
    best = np.maximum.accumulate(np.maximum.accumulate(run, 1), 2)
    return best[:, np.arange(C), np.arange(C)]


def edit_distance(generated: np.ndarray, true: np.ndarray, continuations: list[int]) -> dict[int, np.ndarray]:
    """Token Levenshtein distance / c per continuation length c: [N, C] -> {c: [N] float32}."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cpdist

    out = {}
    for c in continuations:
        d = cpdist(generated[:, :c].tolist(), true[:, :c].tolist(), scorer=Levenshtein.distance, workers=1)
        out[c] = (np.asarray(d, dtype=np.float32) / c).astype(np.float32)
    return out


def near_verbatim(generated: np.ndarray, true: np.ndarray, continuations: list[int], approx_bleu: float = APPROX_BLEU
                  ) -> dict[int, dict[str, np.ndarray]]:
    """Near-verbatim columns per continuation length, for generations and truths [N, C]."""
    generated, true = np.asarray(generated, dtype=np.int64), np.asarray(true, dtype=np.int64)
    bleu, lcs = bleu4(generated, true), longest_common_substring(generated, true)
    dist = edit_distance(generated, true, continuations)
    return {c: {"edit_distance": dist[c], "lcs_len": lcs[:, c - 1].astype(np.int16), "bleu4": bleu[:, c - 1].astype(np.float32),
                "approx_memorized": bleu[:, c - 1] >= approx_bleu} for c in continuations}
