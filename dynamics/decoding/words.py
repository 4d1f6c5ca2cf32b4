"""Word n-grams that distinguish memorized from unmemorized samples (Monroe et al. 2008).

Each collected sequence's true context + continuation is decoded to text, split into words with
nltk's wordpunct tokenizer (a regular expression: no downloaded corpus needed), lower-cased, and
its word n-grams (n = 1..3) counted. Memorized (score 1) and unmemorized (score 0) samples are
compared by the weighted log-odds ratio with an informative Dirichlet prior: with counts y_w^i of
n-gram w in group i (n_i in total) and prior counts a_w (a_0 in total),

    delta_w = log((y_w^1 + a_w) / (n_1 + a_0 - y_w^1 - a_w)) - log((y_w^2 + a_w) / (n_2 + a_0 - y_w^2 - a_w))
    z_w     = delta_w / sqrt(1 / (y_w^1 + a_w) + 1 / (y_w^2 + a_w))

The prior is the n-gram counts of ALL collected samples of the model (every level), so it is
informative and includes both groups. z > 0: typical of memorized samples.

Table (OUT/tables/words.parquet and .csv): model, domain ("all" or a domain of the family's data),
ngram, order (1..3), count_memorized, count_unmemorized, prior, log_odds, z; the `top` n-grams
with the largest and the smallest z per (model, domain).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd


def word_ngrams(text: str, max_n: int = 3) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize
    from nltk.util import everygrams

    words = [w.lower() for w in wordpunct_tokenize(text)]
    return [" ".join(g) for g in everygrams(words, 1, max_n)]


def log_odds(counts_a: Counter, counts_b: Counter, prior: Counter) -> pd.DataFrame:
    """Weighted log-odds with an informative Dirichlet prior, one row per n-gram of the prior."""
    words = sorted(prior)
    ya = np.array([counts_a.get(w, 0) for w in words], dtype=np.float64)
    yb = np.array([counts_b.get(w, 0) for w in words], dtype=np.float64)
    a = np.array([prior[w] for w in words], dtype=np.float64)
    na, nb, a0 = ya.sum(), yb.sum(), a.sum()
    delta = np.log((ya + a) / (na + a0 - ya - a)) - np.log((yb + a) / (nb + a0 - yb - a))
    z = delta / np.sqrt(1 / (ya + a) + 1 / (yb + a))
    return pd.DataFrame({"ngram": words, "count_a": ya.astype(np.int64), "count_b": yb.astype(np.int64),
                         "prior": a, "log_odds": delta, "z": z})


def _total(grams: list[Counter], mask: np.ndarray) -> Counter:
    total = Counter()
    for i in np.flatnonzero(mask):
        total.update(grams[i])
    return total


def words_table(seqs: pd.DataFrame, tokens: np.ndarray, tokenizer, meta: dict, top: int = 30, max_n: int = 3) -> pd.DataFrame:
    """Distinguishing word n-grams of one model's samples, overall and per domain.

    seqs: the model's sequences table; tokens [n_rows, k + c]: their true tokens, in row order.
    """
    grams = [Counter(word_ngrams(tokenizer.decode(t.tolist()), max_n)) for t in tokens]
    c = int(meta["continuation_len"])
    domains = [("all", np.ones(len(seqs), dtype=bool))]
    if "domain" in seqs:
        domains += [(d, (seqs["domain"] == d).to_numpy()) for d in sorted(seqs["domain"].unique())]
    out = []
    for domain, mask in domains:
        mem = mask & (seqs["matches"] == c).to_numpy()
        unmem = mask & (seqs["matches"] == 0).to_numpy()
        if not mem.any() or not unmem.any():
            continue
        t = log_odds(_total(grams, mem), _total(grams, unmem), _total(grams, mask))
        t = t.rename(columns={"count_a": "count_memorized", "count_b": "count_unmemorized"})
        t = t.sort_values(["z", "ngram"], ascending=[False, True])
        t = pd.concat([t.head(top), t.tail(top)]).drop_duplicates("ngram")
        t.insert(0, "domain", domain)
        t.insert(2, "order", t["ngram"].str.count(" ") + 1)
        out.append(t)
    if not out:
        return pd.DataFrame()
    table = pd.concat(out, ignore_index=True)
    table.insert(0, "model", meta["model"])
    return table
