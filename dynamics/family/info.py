"""`memdyn family info`: what a family holds, as a short text table."""

from __future__ import annotations

from dynamics.corpus.megatron import IndexedDataset
from dynamics.family.spec import load_family


def _short(revisions: list[str]) -> str:
    if len(revisions) <= 8:
        return " ".join(revisions)
    return " ".join(revisions[:4]) + f" ... ({len(revisions)} in all) ... " + " ".join(revisions[-2:])


def describe(spec: str) -> str:
    family = load_family(spec)
    precision = ", trained in bf16 mixed precision" if family.train_dtype == "bf16" else ""
    precision += f", every size at peak learning rate {family.train_lr:g}" if family.train_lr is not None else ""
    lines = [f"family {family.name} ({family.kind}{', preset ' + family.preset if family.preset else ''}{precision})"]
    rates = family.peak_rates()
    lines.append(f"{'size':>8} {'params':>14} {'layers':>6} {'d_model':>7}{' peak lr' if rates else ''}  checkpoints")
    for s in family.sizes:
        params = f"{s.params:,}" if s.params else "?"
        rate = f" {rates[s.name]:>7g}" if rates else ""
        lines.append(f"{s.name:>8} {params:>14} {s.layers or '?':>6} {s.d_model or '?':>7}{rate}  {_short(s.revisions) or 'main'}")
    if family.data and family.data.prefix:
        try:
            ds = IndexedDataset(family.data.prefix)
            lines.append(
                f"data: {len(ds):,} samples x {ds.fixed_length()} tokens = {ds.n_tokens:,} tokens ({ds.dtype}), "
                f"{family.data.batch_size} samples per step, {ds.bin_path}"
            )
        except Exception as e:  # a hub family's data may simply not be here
            lines.append(f"data: {family.data.prefix} ({e})")
    if family.data and family.data.heldout_prefix:
        ds = IndexedDataset(family.data.heldout_prefix)
        lines.append(f"held out: {len(ds):,} samples never trained on")
    if family.corpus:
        c = family.corpus
        lines.append(f"corpus: {c.get('source')}, {c.get('documents')} documents, {c.get('tokens'):,} tokens, sha256 {str(c.get('hash'))[:16]}")
    return "\n".join(lines)
