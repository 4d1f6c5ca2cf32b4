"""`memdyn membership`: membership-inference attacks per size and checkpoint, chunked and resumable.

A membership directory holds:
  _settings.json       what it was computed with; a rerun with other settings is refused
  _parts/              one Parquet file per finished job: target-<model>-<revision>-<split>-<chunk>
                       (attack scores of a chunk of samples) and reference-<key>-<split>-<chunk>
                       (a reference model's loss on them), each written atomically when done
  _manifest/           a record per finished part (dynamics/manifest.py): a rerun recomputes a
                       part that is truncated or altered instead of reading it
  attacks.parquet      one row per (model, revision, split, sample_idx): loss, zlib, min_k_10,
                       min_k_20, min_k_pp_20 and, with a reference, reference_loss and reference
  metrics.parquet/.csv one row per (model, revision, attack): AUROC with its 95% bootstrap interval,
                       TPR at 1% and 0.1% FPR, sample counts and, for data memdyn packed, the
                       documents each side's samples cover and a second interval that resamples
                       the documents the samples start in (see dynamics/capacity/attacks.py)
  roc.parquet          the ROC curves (fpr, tpr) behind the metrics
  metrics_by_duplication.parquet  (members from a memdyn family's training data) the same metrics
                       at each model's last checkpoint for two strata of members: "seen once" (every
                       document of the sample occurs once in the training stream) and "duplicated" (it
                       touches a duplicated document), each against the non-members of its kind where
                       memdyn packed them (matched), else against all
  roc-<model>.png/.svg ROC curves of every attack at the model's latest checkpoint scored
Members and non-members are balanced: n = min(pool sizes, --samples) of each, drawn with the seed.
Under `accelerate launch` each process takes every world_size-th job (dynamics/scoring/table.py).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from dynamics.capacity.attacks import ATTACKS, attack_metrics, score_samples
from dynamics.corpus.megatron import IndexedDataset
from dynamics import manifest
from dynamics.corpus.steps import sort_revisions
from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec
from dynamics.files import atomic_path, save_figure
from dynamics.lock import locks_output
from dynamics.workers import check_workers, kept, run_jobs
from dynamics.capacity.mia_plan import SETTINGS, SPLITS, MembershipPlan, plan_membership

PARTS = "_parts"


def _part_name(job) -> str:
    kind, who, rev, split, chunk = job
    name = who.name if kind == "target" else who
    rev = f"-{rev or 'main'}" if kind == "target" else ""  # a model without revisions: its main branch
    return f"{kind}-{name}{rev}-{split}-{chunk:05d}.parquet"


def _job_rows(plan: MembershipPlan, job) -> np.ndarray:
    """The sample indices of a job: one chunk of one split's drawn samples."""
    split, chunk, size = job[3], job[4], plan.settings.chunk_size
    return plan.indices[split][chunk * size : (chunk + 1) * size]


def _job_done(out: Path, plan: MembershipPlan, job) -> bool:
    """The job's part is finished and intact (manifest.settle: a truncated or altered part is
    removed, so the job runs again)."""
    return manifest.settle(out, f"{PARTS}/{_part_name(job)}", len(_job_rows(plan, job)), manifest.parquet_rows)


def _run_job(job, model, plan: MembershipPlan, datasets: dict, tokenizer, device) -> pd.DataFrame:
    from dynamics.corpus.steps import revision_step
    from dynamics.family.load import check_data_vocab

    kind, who, rev, split, _ = job
    s = plan.settings
    idx = _job_rows(plan, job)
    ds = datasets[split]
    tokens = np.asarray(ds.batch(0, len(ds))[idx])[:, : s.length]
    name = who.name if kind == "target" else f"reference for {who}"
    check_data_vocab(int(tokens.max()), model.get_input_embeddings().num_embeddings, str(ds.bin_path), name)
    texts = tokenizer.batch_decode(tokens.tolist()) if kind == "target" else None
    scores = score_samples(model, tokens, s.batch_size, device, texts)
    if kind == "reference":
        return pd.DataFrame({"key": who, "split": split, "sample_idx": idx, "reference_loss": scores["loss"]})
    head = {"model": who.name, "revision": rev or "main", "step": revision_step(rev) if str(rev).startswith("step") else -1,
            "split": split, "sample_idx": idx}
    return pd.DataFrame(head | scores)


def _write_job(family: FamilySpec, out: Path, plan: MembershipPlan, job, device) -> None:
    """Run one job and write its part atomically."""
    from dynamics.family.load import load_model, load_reference_model, load_tokenizer

    kind, who, rev = job[:3]
    key = (family.root, kind, who.name if kind == "target" else who, rev, str(device), plan.settings.dtype)
    model = kept("model", key, lambda: load_model(family, who, rev, device=device, dtype=plan.settings.dtype)
                 if kind == "target" else load_reference_model(rev, device, plan.settings.dtype))
    tokenizer = kept("tokenizer", (family.name, family.root), lambda: load_tokenizer(family))
    datasets = kept("data", tuple(sorted(plan.prefixes.items())),
                    lambda: {s: IndexedDataset(p) for s, p in plan.prefixes.items()})
    table = _run_job(job, model, plan, datasets, tokenizer, device)
    with atomic_path(out / PARTS / _part_name(job)) as tmp:
        table.to_parquet(tmp, index=False)
    manifest.record_part(out, f"{PARTS}/{_part_name(job)}", len(table))


@locks_output()
def run_membership(family: FamilySpec, out: str | Path, *, members: str, nonmembers: str, models: list[str] | None = None,
                   revisions: list[str] | str | None = None,
                   reference: str | None = None, samples: int | None = None, length: int | None = None, seed: int = 0,
                   dtype: str = "fp32", device: str | None = None, batch_size: int = 32, chunk_size: int = 256,
                   progress: bool = True, workers: int = 1, replace_stale: bool = False) -> pd.DataFrame | None:
    """Every missing job (this process's share), then, on the main process, the attacks table,
    the metrics and the ROC figures; returns the metrics (None on other processes). members and
    nonmembers: Megatron prefixes, or "train" / "heldout" (the family's own); revisions: checkpoint
    names (default each size's last), or "all"; workers > 1 on a CPU, outside a launcher: the jobs
    run in so many single-threaded processes (dynamics.workers); replace_stale: results of other
    settings in `out` are recomputed instead of refused (one process only, as `score`'s)."""
    check_workers(workers)
    if revisions == "all":
        revisions = sort_revisions({r for s in family.select(models) for r in s.revisions})
    from tqdm.auto import tqdm

    from dynamics.family.load import resolve_device
    from dynamics.scoring.table import claim_jobs, process_state, start_output

    out = Path(out)
    state = process_state(device)
    plan = plan_membership(family, out, members, nonmembers, models, revisions, reference, samples, length, seed,
                           dtype, device, batch_size, chunk_size, replace_stale=replace_stale and state.num_processes == 1)
    start_output(state, out, SETTINGS, asdict(plan.settings), (PARTS,))
    todo = claim_jobs(state, plan.jobs, lambda j: _job_done(out, plan, j))
    dev = state.device if device in (None, "auto") else resolve_device(device)
    bar = tqdm(total=len(todo), desc=f"membership [{state.process_index}]", unit="chunk", disable=not progress or not todo)
    run_jobs(partial(_write_job, family, out, plan), [(job,) for job in todo], device=dev, workers=workers,
             launched=state.num_processes, done=lambda _: bar.update(1))
    bar.close()
    state.wait_for_everyone()
    result = finish(out, plan) if state.is_main_process else None
    state.wait_for_everyone()
    return result


def attacks_table(out: Path, plan: MembershipPlan) -> pd.DataFrame:
    """Every (model, revision) whose parts are all done, with the reference ratio joined in."""
    parts = sorted((out / PARTS).glob("target-*.parquet"))
    if not parts:
        raise MemdynError(f"{out} holds no finished membership jobs; rerun the command to compute them")
    t = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    n = t.groupby(["model", "revision"])["sample_idx"].transform("size")
    t = t[n == 2 * plan.settings.n]
    if t.empty:
        raise MemdynError(f"{out} holds no finished (model, revision) yet; rerun the command to compute the missing jobs")
    refs = sorted((out / PARTS).glob("reference-*.parquet"))
    if plan.settings.reference is not None and refs:
        r = pd.concat([pd.read_parquet(p) for p in refs], ignore_index=True)
        t = t.assign(key=t.model.map(plan.ref_keys))
        t = t.merge(r, on=["key", "split", "sample_idx"], how="left").drop(columns="key")
        t["reference"] = t["loss"] - t["reference_loss"]
    order = {m: i for i, m in enumerate(plan.sizes)}
    t = t.assign(_o=t.model.map(order)).sort_values(["_o", "step", "split", "sample_idx"]).drop(columns="_o")
    return t.reset_index(drop=True)


def sample_tables(plan: MembershipPlan) -> dict:
    """Each side's rows of memdyn's per-sample table, indexed by sample_idx (doc_ids, first_doc,
    max_doc_copies, ...; None for data memdyn did not pack), read once for every table of `finish`."""
    from dynamics.family.data import TrainingData

    return {split: TrainingData(plan.prefixes[split]).samples for split in SPLITS}


def _doc_table(table: pd.DataFrame | None) -> pd.DataFrame | None:
    """doc_ids (the documents a sample covers) and first_doc (the one it starts in), where known."""
    return table[["doc_ids", "first_doc"]] if table is not None and {"doc_ids", "first_doc"} <= set(table) else None


def _documents(side: pd.DataFrame, docs: pd.DataFrame | None) -> float:
    """How many documents the side's samples cover (NaN where unknown): samples of one document are
    not independent, so this is the count a reader weighs the AUROC's interval by."""
    return float(len(set().union(*map(set, docs.doc_ids.loc[side.sample_idx])))) if docs is not None and len(side) else np.nan


def attack_table_metrics(t: pd.DataFrame, plan: MembershipPlan, tables: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics: one row per model, revision, attack; ROC curve points); tables: sample_tables(plan)."""
    rows, curves = [], []
    docs = {split: _doc_table(tables[split]) for split in SPLITS}
    for (model, rev), g in t.groupby(["model", "revision"], sort=False):
        member, nonmember = g[g.split == "member"], g[g.split == "nonmember"]
        counts = {"member_documents": _documents(member, docs["member"]), "nonmember_documents": _documents(nonmember, docs["nonmember"])}
        groups = None if any(d is None for d in docs.values()) else (
            docs["member"].first_doc.loc[member.sample_idx].to_numpy(), docs["nonmember"].first_doc.loc[nonmember.sample_idx].to_numpy())
        seen = np.nan
        step = int(g.step.iloc[0])
        if plan.settings.training_order and plan.step_batch and step >= 0:
            seen = float(np.mean(member.sample_idx.to_numpy() < step * plan.step_batch))
        for attack, sign in ATTACKS.items():
            if attack not in g or g[attack].isna().any():
                continue
            metrics, (fpr, tpr) = attack_metrics(sign * member[attack].to_numpy(), sign * nonmember[attack].to_numpy(),
                                                 seed=plan.settings.seed, groups=groups)
            head = {"model": model, "revision": rev, "step": step, "attack": attack}
            rows.append(head | metrics | {"n_members": len(member), "n_nonmembers": len(nonmember), "members_seen": seen} | counts)
            curves.append(pd.DataFrame(head | {"fpr": fpr, "tpr": tpr}))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


STRATA = ("seen once", "duplicated")


def _duplicated(samples: pd.DataFrame, table: pd.DataFrame | None) -> np.ndarray | None:
    """Per row of `samples` (one split of an attacks table): does it touch a document with more than
    one copy in its stream? None when the data has no memdyn per-sample table."""
    if table is None or "max_doc_copies" not in table:
        return None
    return samples.sample_idx.map(table["max_doc_copies"]).to_numpy() > 1


def duplication_metrics(t: pd.DataFrame, plan: MembershipPlan, tables: dict) -> pd.DataFrame | None:
    """Metrics at each model's last checkpoint of the members seen once and of those touching a
    duplicated document: duplication makes membership easy, so the pooled AUROC mixes two problems.
    Each stratum is set against the non-members of its kind where memdyn packed them (held-out
    documents are duplicated by the training stream's rule in a stream of their own, and duplicated
    documents are cut to their beginnings, text unlike the rest), else against all of them
    (`matched`). None when the members' data has no memdyn per-sample table."""
    last = t[t.step == t.groupby("model").step.transform("max")]
    member, nonmember = last[last.split == "member"], last[last.split == "nonmember"]
    duplicated = _duplicated(member, tables["member"])
    if duplicated is None:
        return None
    held = _duplicated(nonmember, tables["nonmember"])
    parts = []
    for stratum, chosen, kind in zip(STRATA, (~duplicated, duplicated), (False, True)):
        against = nonmember if held is None else nonmember[held == kind]
        if chosen.any() and len(against):
            parts.append(attack_table_metrics(pd.concat([member[chosen], against]), plan, tables)[0]
                         .assign(stratum=stratum, matched=held is not None))
    return pd.concat(parts, ignore_index=True).drop(columns="members_seen") if parts else None


def finish(out: Path, plan: MembershipPlan) -> pd.DataFrame:
    t = attacks_table(out, plan)
    tables = sample_tables(plan)
    metrics, roc = attack_table_metrics(t, plan, tables)
    by_duplication = duplication_metrics(t, plan, tables)
    tables = [("attacks.parquet", t), ("metrics.parquet", metrics), ("roc.parquet", roc)]
    for name, table in tables + ([("metrics_by_duplication.parquet", by_duplication)] if by_duplication is not None else []):
        with atomic_path(out / name) as tmp:
            table.to_parquet(tmp, index=False)
    with atomic_path(out / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False)
    for model, g in roc.groupby("model", sort=False):
        latest = g[g.step == g.step.max()]
        plot_roc(latest, metrics[(metrics.model == model) & (metrics.step == latest.step.iloc[0])], out / f"roc-{model}")
    return metrics


def plot_roc(roc: pd.DataFrame, metrics: pd.DataFrame, stem: Path) -> None:
    """ROC curves of every attack, linear and log-log (low FPR is where attacks matter)."""
    from matplotlib.figure import Figure  # no pyplot: nothing touches the global backend

    auroc = dict(zip(metrics.attack, metrics.auroc))
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    for attack, g in roc.groupby("attack", sort=False):
        for ax in axes:
            ax.plot(g.fpr, g.tpr, lw=1.2, label=f"{attack} (AUROC {auroc[attack]:.3f})")
    floor = 1.0 / max(1, int(metrics.n_nonmembers.max()))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot([floor, 1], [floor, 1], c="grey", lw=0.8, ls=":")
        ax.set_xscale(scale)
        ax.set_yscale(scale)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
    axes[1].set_xlim(floor / 2, 1)
    axes[1].set_ylim(floor / 2, 1.05)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"membership inference: {roc.model.iloc[0]} at {roc.revision.iloc[0]}")
    fig.tight_layout()
    for ext in ("png", "svg"):
        save_figure(fig, f"{stem}.{ext}", ext, dpi=120)  # the same bytes on every run
