"""The embedded world: duplicated documents and canaries, built like the real pre-training data.

Duplication (as in the Pile): most training documents occur once; a seeded share of them is
duplicated, each with a count drawn log-uniformly from 2 to `max_copies` (and cut to `doc_tokens`,
boilerplate-sized, so the heavy tail does not swamp the stream). All copies are shuffled into one
document stream, so each copy starts at another offset inside the packed samples. Documents are
taken in the corpus' seeded order until the stream fills `target_tokens` (one pass of training);
later documents stay unused by the world and can feed reference models.

Canaries (Carlini et al. 2019; Huang et al. 2024): sequences nobody can guess, inserted with
controlled repetition counts at controlled points of training:
  kind "tokens"  `length` tokens drawn uniformly from the vocabulary without special tokens
  kind "words"   words drawn uniformly from the distinct words of the world's training text
                 (`canary_words.json`), as many as it takes to reach `length` tokens
Each copy overwrites a window of one training sample, `<|endoftext|>` on both sides (so the canary
is a document of its own), at a seeded offset; every copy of a canary sits in another sample and
every sample holds at most one copy. "early" / "middle" / "late" canaries land only in samples
trained in the first / second / last third of the steps. Canaries never enter held-out or
reference data; a canary whose first tokens occur in any corpus text is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from dynamics.corpus.tokenizer import EOD_ID, PAD_ID
from dynamics.errors import MemdynError

INSERTS = ("early", "middle", "late")
KINDS = ("tokens", "words")
COLLISION_TOKENS = 16  # a canary whose first so many tokens occur in corpus text collides with it
WORD = re.compile(r"\b[a-z]{3,12}\b")


@dataclass(frozen=True)
class Duplication:
    share: float = 0.0  # probability that a training document is duplicated
    max_copies: int = 100  # copies of a duplicated document: log-uniform integers in [2, max_copies]
    doc_tokens: int | None = None  # duplicated documents are cut to this many tokens

    def check(self) -> None:
        if not 0 <= self.share <= 1:
            raise MemdynError(f"duplication share must be in [0, 1], got {self.share}")
        if self.max_copies < 2:
            raise MemdynError(f"duplication max_copies must be >= 2, got {self.max_copies}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CanarySettings:
    counts: tuple[int, ...] = ()  # repetition counts; one canary per (kind, count, insert) and replicate
    inserts: tuple[str, ...] = INSERTS
    kinds: tuple[str, ...] = KINDS
    length: int = 48  # tokens of a canary (word canaries: at least this many)
    replicates: int = 1
    # more canaries of each kind at (insert, count), beyond that grid: more of them where the sizes differ
    extra: tuple[tuple[str, int], ...] = ()

    def cells(self) -> list[tuple[int, str]]:
        """(count, insert) of each canary of one kind: the grid, then the extra ones."""
        grid = [(c, w) for c in self.counts for w in self.inserts for _ in range(self.replicates)]
        return grid + [(c, w) for w, c in self.extra]

    def check(self, sample_tokens: int) -> None:
        counts = [*self.counts, *(c for _, c in self.extra)]
        if any(c < 1 for c in counts) or self.replicates < 1 or self.length < 2:
            raise MemdynError(f"canary counts and replicates must be >= 1 and the length >= 2, got {self}")
        inserts = {*self.inserts, *(w for w, _ in self.extra)}
        if inserts - set(INSERTS) or set(self.kinds) - set(KINDS):
            raise MemdynError(f"canary inserts must be among {INSERTS} and kinds among {KINDS}, got {self}")
        if counts and self.length + 2 > sample_tokens:
            raise MemdynError(
                f"canaries of {self.length} tokens do not fit samples of {sample_tokens} tokens with an "
                f"end-of-document token on each side: use a canary length <= {sample_tokens - 2}"
            )

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- duplication


def draw_copies(n: int, dup: Duplication, rng: np.random.Generator) -> np.ndarray:
    """Copies of n documents: 1, or for a `dup.share` of them a log-uniform count in [2, max_copies]."""
    duplicated = rng.random(n) < dup.share
    counts = np.floor(np.exp(rng.uniform(math.log(2), math.log(dup.max_copies + 1), n))).astype(np.int64)
    return np.where(duplicated, counts, 1)


def stream_tokens(lengths: np.ndarray, copies: np.ndarray, dup: Duplication) -> np.ndarray:
    """Tokens each document puts into its stream: its copies times its length, duplicated ones cut."""
    cut = np.minimum(lengths, dup.doc_tokens + 1) if dup.doc_tokens else lengths
    return copies * np.where(copies > 1, cut, lengths)


def plan_documents(lengths: np.ndarray, dup: Duplication, heldout_fraction: float, target_tokens: int | None,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(split per document: "train" | "heldout" | "" for unused, copies per document) for documents
    of `lengths` tokens (end-of-document included), taken in order until the training stream of all
    copies holds `target_tokens` (None: use every document). Held-out documents are duplicated by
    the same rule in a stream of their own, so that non-members are drawn as members are."""
    dup.check()
    n = len(lengths)
    split = np.full(n, "", dtype=object)
    copies = np.zeros(n, dtype=np.int64)
    heldout = rng.random(n) < heldout_fraction
    drawn = draw_copies(n, dup, rng)
    sizes = stream_tokens(lengths, drawn, dup)
    total = 0
    for i in range(n):
        if target_tokens is not None and total >= target_tokens:
            break
        split[i], copies[i] = "heldout" if heldout[i] else "train", drawn[i]
        total += 0 if heldout[i] else sizes[i]
    return split, copies


def stream_order(copies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Document ids of every copy, shuffled: the order of the training document stream."""
    return rng.permutation(np.repeat(np.arange(len(copies)), copies))


# ---------------------------------------------------------------------------- canaries


def corpus_words(texts) -> list[str]:
    """Distinct lower-case words (3-12 letters) of the texts, sorted: the word canaries' alphabet."""
    words: set[str] = set()
    for text in texts:
        words.update(WORD.findall(text))
    return sorted(words)


def make_canaries(settings: CanarySettings, tokenizer, words: list[str], seed: int) -> list[dict]:
    """One record per canary (see the module docstring); placement fields are filled by place_canaries."""
    rng = np.random.default_rng([seed, 7])
    specials = {EOD_ID, PAD_ID, *tokenizer.all_special_ids}
    alphabet = np.array([t for t in range(len(tokenizer)) if t not in specials], dtype=np.int64)
    if "words" in settings.kinds and len(words) < 2:
        raise MemdynError("the corpus has fewer than 2 distinct words for word canaries; use token canaries only")
    out = []
    for kind in settings.kinds:
        for count, insert in settings.cells():
            if kind == "tokens":
                tokens = rng.choice(alphabet, size=settings.length).tolist()
                text, length, space = tokenizer.decode(tokens), settings.length, settings.length * math.log2(len(alphabet))
            else:
                text, tokens = _word_canary(rng, words, tokenizer, settings.length)
                length = len(text.split(" "))
                space = length * math.log2(len(words))
            out.append({"canary_id": len(out), "kind": kind, "text": text, "tokens": tokens, "count": int(count),
                        "insert": insert, "length": int(length), "space_size_log2": float(space)})
    return out


def _word_canary(rng, words: list[str], tokenizer, length: int) -> tuple[str, list[int]]:
    """Words drawn uniformly until the text is at least `length` tokens long."""
    chosen: list[str] = []
    while True:
        chosen.append(words[rng.integers(len(words))])
        text = " ".join(chosen)
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) >= length:
            return text, list(map(int, tokens))


def check_capacity(canaries: list[dict], n_samples: int, batch_size: int, sample_tokens: int) -> None:
    """Refuse canaries that cannot be placed: too long for a sample, or more copies in a third of
    training than it has samples (each copy needs a sample of its own)."""
    for c in canaries:
        if len(c["tokens"]) + 2 > sample_tokens:
            raise MemdynError(
                f"canary {c['canary_id']} ({c['kind']}) has {len(c['tokens'])} tokens, too long for samples of "
                f"{sample_tokens} tokens with an end-of-document token on each side: use a shorter canary length"
            )
    bounds = third_bounds(n_samples // batch_size, batch_size)
    for i, insert in enumerate(INSERTS):
        need = sum(c["count"] for c in canaries if c["insert"] == insert)
        have = bounds[i + 1] - bounds[i]
        if need > have:
            raise MemdynError(
                f"the {insert} canaries need {need} copies but the {insert} third of training has only {have} "
                "samples (one copy per sample): lower the canary counts or train for more steps"
            )


def third_bounds(steps: int, batch_size: int) -> list[int]:
    """Sample rows where the early / middle / late thirds of the steps begin, and the end."""
    return [steps * q // 3 * batch_size for q in range(4)]


def place_canaries(samples: np.ndarray, canaries: list[dict], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Overwrite windows of training samples [n, S] (in training order, in place) with the canaries'
    copies; fills each canary's sample_idx, offsets and steps. Returns the canary ids per sample."""
    n, width = samples.shape
    check_capacity(canaries, n, batch_size, width)
    bounds = third_bounds(n // batch_size, batch_size)
    per_sample: list[list[int]] = [[] for _ in range(n)]
    for i, insert in enumerate(INSERTS):
        group = [c for c in canaries if c["insert"] == insert]
        copies = [c for c in group for _ in range(c["count"])]
        rows = rng.choice(np.arange(bounds[i], bounds[i + 1]), size=len(copies), replace=False)
        for c in group:
            c["sample_idx"], c["offsets"], c["steps"] = [], [], []
        for c, row in zip(copies, rows):
            tokens = np.asarray(c["tokens"], dtype=samples.dtype)
            offset = int(rng.integers(1, width - len(tokens)))  # an EOD before, and after when it fits
            samples[row, offset - 1] = EOD_ID
            samples[row, offset : offset + len(tokens)] = tokens
            if offset + len(tokens) < width:
                samples[row, offset + len(tokens)] = EOD_ID
            c["sample_idx"].append(int(row))
            c["offsets"].append(offset)
            c["steps"].append(int(row) // batch_size)
            per_sample[row].append(c["canary_id"])
    for c in canaries:  # copies in training order
        order = np.argsort(c.get("sample_idx", []), kind="stable")
        for key in ("sample_idx", "offsets", "steps"):
            c[key] = [c[key][j] for j in order]
    return per_sample


def _window_hashes(stream: np.ndarray, m: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every window of m tokens -> [len(stream) - m + 1] uint64."""
    stream = np.asarray(stream, dtype=np.uint64)
    n = len(stream) - m + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(m):
            h = h * np.uint64(1_000_003) + stream[j : j + n] + np.uint64(1)
    return h


def check_collisions(canaries: list[dict], streams: list[np.ndarray]) -> None:
    """Refuse canaries whose first COLLISION_TOKENS tokens (all, if shorter) occur in corpus text."""
    for m in sorted({min(COLLISION_TOKENS, len(c["tokens"])) for c in canaries}):
        group = [c for c in canaries if min(COLLISION_TOKENS, len(c["tokens"])) == m]
        wanted = _window_hashes(np.concatenate([np.asarray(c["tokens"][:m]) for c in group]), m)[::m]
        for stream in streams:
            stream = np.asarray(stream)
            hits = np.flatnonzero(np.isin(_window_hashes(stream, m), wanted))
            for pos in hits:
                window = stream[pos : pos + m].tolist()
                for c in group:
                    if c["tokens"][:m] == window:
                        raise MemdynError(
                            f"canary {c['canary_id']} ({c['kind']}: {c['text'][:40]!r}) collides with corpus text "
                            f"(its first {m} tokens occur there): use longer canaries or another seed"
                        )
