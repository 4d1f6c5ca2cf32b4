"""The recitation / reconstruction / recollection rules and their tables."""

import numpy as np
import pandas as pd

from dynamics.analyses import taxonomy as T


def test_repeat_rule_finds_the_smallest_period():
    x = np.array([5, 9, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert T.repeat_period(x, 8, 6) == 3
    assert T.reconstruction_rule(x, 8, 6) == "repeat:3"
    assert T.repeat_period(np.array([7] * 12), 6, 6) == 1
    broken = x.copy()
    broken[-1] = 4  # one token off the pattern
    assert T.repeat_period(broken, 8, 6) == 0
    assert T.repeat_period(x, 8, 4) == 0  # period 3 > c // 2: not recurring enough to count


def test_token_and_number_progressions():
    assert T.token_progression(np.array([1, 40, 41, 42, 43, 44, 45]), 3, 4)
    assert not T.token_progression(np.array([1, 40, 41, 42, 43, 44, 47]), 3, 4)
    assert not T.token_progression(np.array([9, 9, 9, 9, 9]), 2, 3)  # constant: the repeat rule's case
    assert T.number_progression("items = [1, 2, 3, ", "4, 5]")
    assert T.number_progression("line 10\nline 20\n", "line 30")
    assert not T.number_progression("items = [1, 2, 3, ", "7]")
    assert not T.number_progression("1, 2, 3, 4, ", "foo")  # no number in the continuation
    assert not T.number_progression("x", "5, 5, 5")  # step 0


def test_categories_in_priority_order():
    cats = T.categorize(np.array([6, 50, 1, 1, 5]), ["", "repeat:2", "numbers", "", ""])
    assert list(cats) == ["recitation", "recitation", "reconstruction", "recollection", "recollection"]


def test_shares_and_transitions():
    scored = pd.DataFrame({
        "model": ["a"] * 4 + ["b"] * 4, "step": 5, "seq_idx": [0, 1, 2, 3] * 2,
        "category": ["recitation", "recitation", "recollection", "recollection"] * 2,
        "score": [1, 0, 0, 0, 1, 1, 1, 0], "document": [0, 0, 1, 2] * 2,
    })
    shares = T.shares(scored, seed=0).set_index(["category", "model"])
    assert shares.loc[("recitation", "b"), "share"] == 1.0 and shares.loc[("recollection", "a"), "share"] == 0.0
    # model a's two recitation samples are one document: every resample draws both, or neither
    assert tuple(shares.loc[("recitation", "a"), ["ci_lo", "ci_hi"]]) == (0.5, 0.5)
    tr = T.transitions(scored, [("a", 5), ("b", 5)], "sizes").set_index("category")
    assert tr.loc["recitation", "kept"] == 1.0 and tr.loc["recitation", "gained"] == 1.0
    assert tr.loc["recollection", "gained"] == 0.5 and np.isnan(tr.loc["recollection", "kept"])


def test_vectorised_rules_equal_the_per_sample_rule():
    rng = np.random.default_rng(0)
    x = rng.integers(2, 6, size=(400, 14))  # a small alphabet, so periods and progressions occur
    x[:5, 5:] = np.arange(9) + 40  # token progressions (from the last context token)
    x[5:10] = np.tile([7, 8, 9], 5)[:14]  # period 3
    got = T.reconstruction_rules(x, 6, 8)
    assert got == [T.reconstruction_rule(row, 6, 8) for row in x]
    assert {"tokens", "repeat:3"} <= set(got)
