"""Assemble the family overview and the per-size reports from a work directory, and write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dynamics import manifest
from dynamics.decoding import plots
from dynamics.files import check_output_folder, check_output_location, read_json
from dynamics.lock import output_lock
from dynamics.report import findings as F
from dynamics.report.document import Document, Figure, Samples, Section, Table, Text
from dynamics.report.figures import plot_bars, plot_distribution, plot_matrix, plot_share_lines
from dynamics.report.extraction import extraction_section
from dynamics.report.membership import membership_section
from dynamics.report.world import canary_section, duplication_section, taxonomy_section
from dynamics.workdir import Workdir
from dynamics.scoring.transitions import level_counts

N_SAMPLES = 5  # most and least memorized samples shown per size
CAPACITY_MISSING = "capacity stage not run: `memdyn capacity text --family {family}`"


def capacity_section(run: Workdir, model: str | None = None) -> Section:
    """Bits memorized and bits per parameter by size (all sizes, or one), or why there are none."""
    section = Section("Capacity: bits memorized")
    cap = run.capacity
    if cap is None:
        section.blocks.append(Text(CAPACITY_MISSING.format(family=run.root / "family")))
        return section
    cap = F.with_bits_per_param(cap)
    if model is None:
        fig = plot_bars(cap, "model", [("bits_memorized", "bits memorized"), ("bits_per_param", "bits / parameter")])
        section.blocks.append(Figure.of("capacity", fig, F.capacity(cap)))
    own = cap[cap["model"] == model] if model else cap
    section.blocks.append(Table(own[["model", "params", "bits_memorized", "bits_per_param"]].reset_index(drop=True),
                                "Unintended memorization (Morris et al. 2025), from WORKDIR/capacity."))
    return section


def predictor_section(run: Workdir, model: str | None = None) -> Section:
    t = F.predictor_table(run.predictor, run.sizes)
    if model is not None and len(t):
        t = t[t["size"] == model].reset_index(drop=True)
    section = Section("Memorization predictor")
    if t.empty:
        section.blocks.append(Text("No predictor results for this size."))
    else:
        section.blocks.append(Table(t, F.predictor(t)))
    return section


def family_report(run: Workdir) -> Document:
    k, c = run.cell
    t = F.shares(run.scores, run.params)
    main = F.at(t, context_len=k, continuation_len=c)
    settings = read_json(run.scores_dir / "_settings.json")
    share = Section("Memorized share", [
        Figure.of("share_size", plot_share_lines(F.at(t, continuation_len=c), "params", "context_len", "parameters",
                                                 logx=True, title=f"continuation {c}"), F.share_by_size(t, k, c)),
        Figure.of("share_context", plot_share_lines(F.at(t, continuation_len=c), "context_len", "model", "context length",
                                                    title=f"continuation {c}"), F.share_by_axis(t, "context_len", "continuation_len", c)),
        Figure.of("share_continuation", plot_share_lines(F.at(t, context_len=k), "continuation_len", "model",
                                                         "continuation length", title=f"context {k}"),
                  F.share_by_axis(t, "continuation_len", "context_len", k)),
        Table(main[["model", "params", "n", "memorized", "memorized_share", "unmemorized_share", "mean_score"]].reset_index(drop=True),
              f"Headline numbers at context {k} / continuation {c}" + (
                  ", over training samples that hold no canary copy (the canaries have a section of their own)"
                  if settings.get("exclude_canaries") else "") + (
                  f"; the models ran in {settings['dtype']}" if settings.get("dtype", "fp32") != "fp32" else "") + (
                  f"; every size trained at peak learning rate {run.family.train_lr:g}, not the preset's per-size rates"
                  if run.family.train_lr is not None else "") + "."),
    ])

    trans = Section("Transitions between memorization levels")
    for a, b in zip(run.sizes, run.sizes[1:]):
        m, text = F.transitions(run.scores, a, b, k, c)
        trans.blocks.append(Figure.of(f"transition_{a}_{b}", plot_matrix(m.drop(columns="n"), f"{a} -> {b}", b, a), text))
    largest = run.sizes[-1]
    ck, cc = int(run.checkpoints["context_len"].iloc[0]), int(run.checkpoints["continuation_len"].iloc[0])
    q, final = F.quarter_revision(run.checkpoints, largest)
    m, text = F.transitions(run.checkpoints, f"{largest}@{q}", f"{largest}@{final}", ck, cc)
    trans.blocks.append(Figure.of("transition_checkpoints", plot_matrix(m.drop(columns="n"), f"{largest}: {q} -> {final}",
                                                                         final, q), text))
    return Document(
        title=f"{run.family.name}: memorization across model sizes",
        summary=[F.share_by_size(t, k, c), F.boundary(run.dynamics_table("jumps"))],
        sections=[share, extraction_section(run), trans, boundary_section(run), duplication_section(run), canary_section(run),
                  taxonomy_section(run), capacity_section(run), membership_section(run), predictor_section(run)],
        links=[(f"{s} report", f"{s}/report.html") for s in run.sizes],
    )


def boundary_section(run: Workdir, model: str | None = None) -> Section:
    curves, jumps = run.dynamics_table("curves"), run.dynamics_table("jumps")
    if model is not None:
        curves, jumps = curves[curves["model"] == model], jumps[jumps["model"] == model]
    section = Section("Boundary effect")
    if curves.empty:
        section.blocks.append(Text("No dynamics curves were collected for this size."))
        return section
    section.blocks.append(Figure.of("boundary_entropy", plots.plot_curves(curves, "entropy_nats", "boundary", "class"),
                                    F.boundary(jumps, "entropy_nats", model)))
    section.blocks.append(Figure.of("boundary_unigram", plots.plot_curves(curves, "orig_n1", "boundary", "class"),
                                    F.boundary(jumps, "orig_n1", model)))
    if model is None and not F.jump_rows(jumps).empty:
        section.blocks.append(Figure.of("boundary_jumps", plots.plot_jumps(jumps, "entropy_nats", "boundary", "class"),
                                        "Entropy jump at the boundary by size (bars: mean, whiskers: 95% bootstrap CI over documents). "
                                        + F.boundary(jumps)))
    return section


def embedding_section(run: Workdir, model: str) -> Section:
    section = Section("Hidden-state embeddings")
    proj = run.dynamics_table("projections")
    proj = proj[proj["model"] == model] if len(proj) else proj
    sep_text = F.separation(run.dynamics_table("separation"), model)
    for method in (proj["method"].unique() if len(proj) else []):
        section.blocks.append(Figure.of(f"projection_{method}", plots.plot_projection(proj, method),
                                        f"{method.upper()} of per-sequence states and level-mean trajectories. {sep_text}"))
    dist = run.dynamics_table("distances")
    dist = dist[dist["model"] == model] if len(dist) else dist
    if len(dist):
        section.blocks.append(Figure.of("distance_cosine", plots.plot_distances(dist, "cosine", 0), F.distances(dist, model)))
    if not section.blocks:
        section.blocks.append(Text("No hidden states were collected for this size."))
    return section


def decode_samples(run: Workdir, model: str, seq_idx: np.ndarray, k: int, c: int) -> pd.DataFrame:
    """Context, true continuation and greedy continuation as text, with duplicate counts and domains."""
    from dynamics.corpus.megatron import IndexedDataset
    from dynamics.family.load import load_tokenizer

    tok = load_tokenizer(run.family)
    data = IndexedDataset(run.family.data.prefix)
    tokens = np.stack([np.asarray(data[int(i)])[: k + c] for i in seq_idx]).astype(np.int64)
    gens = run.generations
    gen = gens[(gens["model"] == model) & (gens["context_len"] == k)].set_index("seq_idx")["generated"]
    # duplicate count of context + continuation: from the dynamics collection, else counted in the n-gram index
    seqs = run.sequences(model)
    known = seqs.set_index("seq_idx")["span_count"] if "span_count" in seqs else pd.Series(dtype=np.int64)
    missing = [i for i in seq_idx if i not in known.index]
    if missing:
        index = run.training_data.ngrams
        rows = [list(seq_idx).index(i) for i in missing]
        known = pd.concat([known, pd.Series(index.count(tokens[rows]), index=missing)])
    domains = run.domains
    return pd.DataFrame({
        "seq_idx": seq_idx,
        "domain": [domains.get(i, "unknown") if domains is not None else "unknown" for i in seq_idx],
        "duplicates": [int(known[i]) for i in seq_idx],
        "context": [tok.decode(t[:k].tolist()) for t in tokens],
        "continuation": [tok.decode(t[k:].tolist()) for t in tokens],
        "generated": [tok.decode(list(gen[i])[:c]) if i in gen.index else "" for i in seq_idx],
    })


def samples_section(run: Workdir, model: str) -> Section:
    k, c = run.cell
    cell = F.at(run.scores, model=model, context_len=k, continuation_len=c)
    gens = F.at(run.generations, model=model, context_len=k).set_index("seq_idx")["loss"]
    cell = cell.assign(loss=cell["seq_idx"].map(gens))
    # ties in score broken by the true continuation's loss: the most confidently (un)memorized first
    top = cell.sort_values(["score", "loss"], ascending=[False, True]).head(N_SAMPLES)
    bottom = cell.sort_values(["score", "loss"], ascending=[True, False]).head(N_SAMPLES)
    section = Section("Most and least memorized samples")
    for label, part in (("Most", top), ("Least", bottom)):
        decoded = decode_samples(run, model, part["seq_idx"].to_numpy(), k, c)
        decoded.insert(1, "score", part["score"].to_numpy())
        decoded.insert(2, "loss", part["loss"].round(3).to_numpy())
        section.blocks.append(Samples(decoded, (
            f"{label} memorized samples at context {k} / continuation {c}: scores {decoded.score.min():.3g} to "
            f"{decoded.score.max():.3g}, duplicates in the training data {decoded.duplicates.min()} to "
            f"{decoded.duplicates.max()}, domains {', '.join(sorted(set(decoded.domain)))}.")))
    return section


def size_report(run: Workdir, model: str) -> Document:
    k, c = run.cell
    t = F.shares(run.scores, run.params)
    levels = F.at(level_counts(run.scores), model=model, context_len=k, continuation_len=c)
    m, grid_text = F.grid(t, model)
    scores = Section("Scores", [
        Figure.of("distribution", plot_distribution(levels, f"{model}, context {k} / continuation {c}"),
                  F.distribution(levels, model, k, c)),
        Figure.of("grid", plot_matrix(m * 100, f"{model}: memorized %", "continuation length", "context length", "{:.1f}", "Reds"),
                  grid_text),
    ])
    return Document(
        title=f"{run.family.name} / {model} ({run.params[model]:,} parameters)",
        summary=[F.distribution(levels, model, k, c), grid_text],
        sections=[scores, extraction_section(run, model), boundary_section(run, model), duplication_section(run, model),
                  canary_section(run, model), taxonomy_section(run, model), embedding_section(run, model), predictor_section(run, model),
                  capacity_section(run, model), membership_section(run, model), samples_section(run, model)],
        links=[("family overview", "../index.html")],
    )


def write_reports(workdir: str | Path, out: str | Path, preset: str | None = None) -> list[Path]:
    """Every report of a work directory under OUT/<family>/; returns the HTML paths."""
    from dynamics.report.html import write_html
    from dynamics.report.markdown import write_markdown

    check_output_location(out, "--out")
    run = Workdir.open(workdir, preset)
    root = Path(out) / run.family.name
    # OUT/<family> holds only reports (recorded in its manifest): never written into when foreign
    check_output_folder(root, "--out", lambda p: (p / manifest.MANIFEST).is_dir()
                        or ((p / "index.html").is_file() and (p / "index.md").is_file()))  # reports from before manifests
    written = []
    with output_lock(root):
        for doc, where, stem in [(family_report(run), root, "index"),
                                 *((size_report(run, s), root / s, "report") for s in run.sizes)]:
            where.mkdir(parents=True, exist_ok=True)
            written.append(write_html(doc, where / f"{stem}.html"))
            write_markdown(doc, where / f"{stem}.md")
        for path in written:
            for page in (path, path.with_suffix(".md")):
                manifest.record_part(root, str(page.relative_to(root)), 1)
    return written
