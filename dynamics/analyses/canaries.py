"""`memdyn canaries`: per canary, model size and checkpoint, the greedy verbatim score and the
exposure of the canaries listed in the family's canaries.parquet (dynamics/corpus/world.py).

Score: each canary is scored as its own sequence with the grid scorer (dynamics.scoring.kernel),
continuation = its last c = min(16, L // 2) tokens, context = the L - c tokens before, after the
`<|endoftext|>` that precedes every copy in training (48-token canaries: context 1 + 32 /
continuation 16; context_len counts the canary's tokens); memorized = score 1. The exposure's
log-probabilities are conditioned on that token too. (Scored from the canary's first token alone,
the tiny family's 4.2m model (seed 0) reproduced 0 of its 48 canaries, and 6 with the token before
them; 617k 4 and 5.)

Exposure (dynamics.analyses.exposure): candidates are drawn the way world.py draws the canaries:
token canaries, tokens uniform over the vocabulary without special tokens; word canaries, words
uniform over canary_words.json joined by spaces. One candidate set per kind, drawn with the seed,
serves every model and checkpoint (paired comparisons). A candidate is drawn at the kind's longest
canary (in tokens, or in words) and its prefixes stand for the shorter ones: the byte-level BPE
splits at spaces, so the tokens of the first n words are a prefix of the tokens of all of them.

OUT/part-<size>-<revision>.parquet   one row per canary: canary_id, kind, count, insert, length,
                                     model, revision, step, copies_seen (copies trained before the
                                     checkpoint), context_len, continuation_len, matches, score,
                                     logp_bits, exposure, exposure_empirical, space_size_log2
OUT/_settings.json                   settings; a rerun with others is refused
`pandas.read_parquet(OUT)` is the table; each part is written atomically, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.analyses import world
from dynamics.bootstrap import mean_ci
from dynamics.corpus.steps import revision_step
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.files import atomic_path, check_output_dir, dtype_setting, settings_record, write_json
from dynamics.lock import locks_output

SETTINGS = "_settings.json"
MIN_CANDIDATES = 32  # below this the fitted tail is noise


def split_lengths(n_tokens: int) -> tuple[int, int]:
    """(context, continuation) of a canary of n_tokens tokens."""
    c = min(16, n_tokens // 2)
    return n_tokens - c, c


def _alphabet(tokenizer) -> np.ndarray:
    from dynamics.corpus.tokenizer import EOD_ID, PAD_ID

    specials = {EOD_ID, PAD_ID, *tokenizer.all_special_ids}  # as world.make_canaries excludes them
    return np.array([t for t in range(len(tokenizer)) if t not in specials], dtype=np.int64)


def candidates(kind: str, units: int, n: int, tokenizer, words: list[str] | None, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """n candidates of `units` tokens (token kind) or words (word kind): (token arrays, ends [n, units])
    where ends[i, u] is the number of tokens of candidate i's first u + 1 units."""
    rng = np.random.default_rng([seed, 11, 0 if kind == "tokens" else 1])
    if kind == "tokens":
        seqs = list(rng.choice(_alphabet(tokenizer), size=(n, units)))
        return seqs, np.tile(np.arange(1, units + 1), (n, 1))
    seqs, ends = [], np.zeros((n, units), dtype=np.int64)
    for i in range(n):
        chosen = [words[j] for j in rng.integers(len(words), size=units)]
        pieces = tokenizer([chosen[0]] + [" " + w for w in chosen[1:]], add_special_tokens=False)["input_ids"]
        full = tokenizer(" ".join(chosen), add_special_tokens=False)["input_ids"]
        if sum(pieces, []) != full:
            raise MemdynError(f"the tokenizer does not split word candidates at spaces ({' '.join(chosen[:4])!r}...); "
                              "word-canary exposure needs a tokenizer that pre-splits on whitespace")
        seqs.append(np.asarray(full, dtype=np.int64))
        ends[i] = np.cumsum([len(p) for p in pieces])
    return seqs, ends


def _units(row) -> int:
    return len(row.tokens) if row.kind == "tokens" else len(row.text.split(" "))


def settings_of(family: FamilySpec, table: pd.DataFrame, seed: int, n_candidates: int, dtype: str = "fp32") -> dict:
    h = hashlib.sha256(str([list(map(int, t)) for t in table["tokens"]]).encode()).hexdigest()[:16]
    # "after": what precedes the canary in its context; outputs scored without it are not mixed in
    return {"family": family.name, "corpus_hash": family.corpus.get("hash"), "canaries": h, "seed": seed,
            "n_candidates": n_candidates, "after": "end-of-document", **dtype_setting(dtype)}


def score_checkpoint(model, table: pd.DataFrame, pools: dict, step: int, batch_size: int) -> pd.DataFrame:
    """One row per canary at one checkpoint: greedy score and exposure."""
    import torch

    from dynamics.analyses.exposure import exposure, fit_candidates, token_logprobs
    from dynamics.corpus.tokenizer import EOD_ID
    from dynamics.scoring.kernel import score_batch

    device = next(model.parameters()).device
    lengths = table["tokens"].map(len).to_numpy()
    matches = np.zeros(len(table), dtype=np.int64)
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        k, c = split_lengths(int(n))
        x = torch.as_tensor(np.stack([np.r_[EOD_ID, table["tokens"].iloc[r]].astype(np.int64) for r in rows])).to(device)
        for i in range(0, len(rows), batch_size):
            gen = score_batch(model, x[i : i + batch_size], [1 + k], c).generated[:, 0]
            matches[rows[i : i + batch_size]] = (gen == x[i : i + batch_size, 1 + k : 1 + k + c].cpu().numpy()).sum(1)
    own = token_logprobs(model, [np.asarray(t) for t in table["tokens"]], batch_size, bos=EOD_ID)
    logp = np.array([lp.sum() for lp in own])
    expo, emp = np.full(len(table), np.nan), np.full(len(table), np.nan)
    for kind, (seqs, ends) in pools.items():
        cum = [np.cumsum(lp) for lp in token_logprobs(model, seqs, batch_size, bos=EOD_ID)]
        mine = np.flatnonzero(table["kind"].to_numpy() == kind)
        units = table["units"].to_numpy()[mine]
        for u in np.unique(units):
            cand = np.array([cs[e - 1] for cs, e in zip(cum, ends[:, u - 1])])  # log2 p of each candidate's first u units
            rows = mine[units == u]
            space = table["space_size_log2"].to_numpy()[rows]
            f, e = exposure(logp[rows], cand, float(space.max()), fitted=fit_candidates(cand))
            expo[rows], emp[rows] = np.minimum(f, space), np.minimum(e, space)
    ks = np.array([split_lengths(int(n)) for n in lengths])
    steps = table["steps"].map(lambda s: int((np.asarray(s) < step).sum()))
    return pd.DataFrame({
        "canary_id": table["canary_id"].to_numpy(), "kind": table["kind"].to_numpy(), "count": table["count"].to_numpy(),
        "insert": table["insert"].to_numpy(), "length": lengths, "copies_seen": steps.to_numpy(),
        "context_len": ks[:, 0], "continuation_len": ks[:, 1], "matches": matches, "score": matches / ks[:, 1],
        "logp_bits": logp, "exposure": expo, "exposure_empirical": emp,
        "space_size_log2": table["space_size_log2"].to_numpy(),
    })


@locks_output()
def run_canaries(family: FamilySpec, out: str | Path, *, seed: int = 0, n_candidates: int = 256, batch_size: int = 64,
                 models: list[str] | None = None, device: str | None = None, dtype: str = "fp32", progress: bool = True,
                 replace_stale: bool = False) -> Path:
    """Score and expose every canary at every checkpoint of every size; resumable per checkpoint.
    replace_stale: canary scores in `out` made with other settings (an earlier memdyn's, in a work
    directory `memdyn run` owns) are removed and made again instead of refused."""
    from tqdm.auto import tqdm

    from dynamics.family.load import load_model, load_tokenizer, resolve_device, resolve_dtype

    out = Path(out)
    device = resolve_device(device)  # an unknown or unavailable device fails before any work
    resolve_dtype(dtype, device)
    table = world.canaries(family)  # an old-layout family fails here, before any work
    if n_candidates < MIN_CANDIDATES:
        raise MemdynError(f"--candidates must be >= {MIN_CANDIDATES} (the exposure fit needs them), got {n_candidates}")
    if batch_size < 1:
        raise MemdynError(f"--batch-size must be >= 1, got {batch_size}")
    sizes = family.select(models)
    settings = settings_of(family, table, seed, n_candidates, dtype)
    if check_output_dir(out, SETTINGS, settings, "canary scores", replace_stale=replace_stale):
        print(f"      {out} held canary scores made with other settings: scored again", flush=True)
    tok = load_tokenizer(family)
    words = world.canary_words(family) if (table["kind"] == "words").any() else None
    table = table.assign(units=[_units(r) for r in table.itertuples()])
    pools = {kind: candidates(kind, int(g["units"].max()), n_candidates, tok, words, seed)
             for kind, g in table.groupby("kind", sort=True)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS, settings_record(settings))
    plan = [(s, r) for s in sizes for r in s.revisions]
    todo = [(s, r) for s, r in plan if not (out / f"part-{s.name}-{r}.parquet").is_file()]
    for size, rev in tqdm(todo, desc="canaries", unit="ckpt", disable=not progress):
        model = load_model(family, size, rev, device=device, dtype=dtype)
        step = revision_step(rev)
        part = score_checkpoint(model, table, pools, step, batch_size)
        part.insert(5, "model", size.name)
        part.insert(6, "revision", rev)
        part.insert(7, "step", step)
        with atomic_path(out / f"part-{size.name}-{rev}.parquet") as tmp:
            part.to_parquet(tmp, index=False)
    return out


def read_canaries(out: str | Path) -> pd.DataFrame:
    out = Path(out)
    if not (out / SETTINGS).is_file() or not any(out.glob("part-*.parquet")):
        raise MemdynError(f"{out} holds no canary scores; compute them with `memdyn canaries --family DIR --out {out}`")
    return pd.read_parquet(out)


# ---------------------------------------------------------------------------- summaries


def _stats(g: pd.DataFrame, seed: int) -> dict:
    mem = (g["score"] >= 1).to_numpy(float)
    _, _, lo, hi = mean_ci(mem, seed)  # a row per canary: canaries are the unit
    _, _, elo, ehi = mean_ci(g["exposure"], seed)
    return {"n": len(g), "memorized": int(mem.sum()), "share": mem.mean(), "share_lo": lo, "share_hi": hi,
            "mean_score": g["score"].mean(), "exposure": g["exposure"].mean(), "exposure_lo": elo, "exposure_hi": ehi,
            "exposure_empirical": g["exposure_empirical"].mean()}


def final(t: pd.DataFrame) -> pd.DataFrame:
    return t[t["step"] == t.groupby("model")["step"].transform("max")]


def by(t: pd.DataFrame, column: str, seed: int) -> pd.DataFrame:
    """Per (model, kind incl. 'all', column) at each model's final checkpoint: memorized share and
    mean exposure with bootstrap 95% CIs over canaries."""
    rows = []
    f = final(t)
    for kind, part in [("all", f), *f.groupby("kind", sort=True)]:
        for (model, value), g in part.groupby(["model", column], sort=True):
            rows.append({"model": model, "kind": kind, column: value, **_stats(g, seed)})
    return pd.DataFrame(rows)


def forgetting(t: pd.DataFrame, seed: int, insert: str = "early") -> pd.DataFrame:
    """Canaries inserted `insert`: memorized share and exposure per model at every checkpoint from
    the first one after the group's last copy (so every point holds the same canaries)."""
    part = t[t["insert"] == insert]
    if part.empty:
        return pd.DataFrame()
    done = part.groupby("canary_id")["count"].first().sum()  # all copies of the group
    seen = part.groupby(["model", "step"])["copies_seen"].transform("sum")
    part = part[seen == done]
    rows = [{"model": model, "step": int(step), **_stats(g, seed)} for (model, step), g in part.groupby(["model", "step"], sort=True)]
    return pd.DataFrame(rows)
