"""A family spec names a set of models, their checkpoints, their tokenizer and their training data.

Three kinds resolve to the same `FamilySpec`:
  a local family directory     written by `memdyn family train` (family.json, see DESIGN.md)
  a hub family name            `pythia`, `pythia-deduped`: EleutherAI ids, revisions `step<N>`
  explicit models              comma-separated hub ids or `from_pretrained` paths
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from dynamics.corpus.steps import PYTHIA_BATCH_SIZE, pythia_revisions
from dynamics.errors import MemdynError
from dynamics.files import read_json

PYTHIA_SIZES = {  # name -> parameters (total, as Pythia names them)
    "70m": 70_426_624, "160m": 162_322_944, "410m": 405_334_016, "1b": 1_011_781_632,
    "1.4b": 1_414_647_808, "2.8b": 2_775_208_960, "6.9b": 6_857_302_016, "12b": 11_846_072_320,
}
HUB_FAMILIES = {"pythia": "", "pythia-deduped": "-deduped"}
PYTHIA_FINAL = "step143000"


@dataclass
class SizeSpec:
    name: str
    params: int | None
    path: str  # a local directory holding step<N>/ folders, or a hub model id
    revisions: list[str]
    layers: int | None = None
    d_model: int | None = None

    @property
    def final(self) -> str | None:
        return self.revisions[-1] if self.revisions else None


@dataclass
class DataSpec:
    prefix: str | None  # Megatron prefix of the training samples, in training order
    seq_length: int  # a sample holds seq_length + 1 tokens
    batch_size: int  # samples per optimizer step (Pythia: 1024)
    dtype: str = "uint16"
    heldout_prefix: str | None = None


@dataclass
class FamilySpec:
    name: str
    kind: str  # local | hub | models
    sizes: list[SizeSpec]
    tokenizer: str
    data: DataSpec | None
    root: Path | None = None
    seed: int | None = None
    corpus: dict = field(default_factory=dict)
    preset: str | None = None
    # {"data", "members", "n_members", "sizes": {size: path of its reference model}}; see train.py
    references: dict = field(default_factory=dict)
    train_dtype: str = "fp32"  # a memdyn family's training precision (family.json "plan"): fp32 or bf16
    train_lr: float | None = None  # one peak learning rate for every size (the plan's "lr"); None: the preset's per size

    def peak_rates(self) -> dict[str, float]:
        """Each size's peak learning rate, for a family memdyn trained from a preset ({} otherwise)."""
        if self.kind != "local" or not self.preset:
            return {}
        from dynamics.family.presets import get_preset

        rates = get_preset(self.preset).peak_rates(self.train_lr)
        return dict(zip(self.size_names, rates)) if len(rates) == len(self.sizes) else {}

    def size(self, name: str) -> SizeSpec:
        for s in self.sizes:
            if s.name == name:
                return s
        raise MemdynError(f"family {self.name!r} has no model {name!r} (models: {', '.join(self.size_names)})")

    @property
    def size_names(self) -> list[str]:
        return [s.name for s in self.sizes]

    def select(self, names: list[str] | None) -> list[SizeSpec]:
        """The sizes named (all when None), validated."""
        if names is None:
            return list(self.sizes)
        if isinstance(names, str):
            raise MemdynError(f"models must be a list of size names, got the string {names!r}")
        return [self.size(n) for n in names]

    def revision(self, size: SizeSpec, revision: str | None) -> str | None:
        """Validate a revision name for a size; None means the final checkpoint."""
        if revision is None or revision in ("final", "main"):
            return size.final
        if size.revisions and revision not in size.revisions:
            shown = ", ".join(size.revisions[:12]) + (" ..." if len(size.revisions) > 12 else "")
            raise MemdynError(f"model {size.name!r} of family {self.name!r} has no revision {revision!r} (revisions: {shown})")
        return revision

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("root")
        out.pop("kind")
        out.pop("train_dtype")  # (the plan records them)
        out.pop("train_lr")
        return out


def _from_json(obj: dict, root: Path) -> FamilySpec:
    from dynamics.family.presets import is_peak_rate

    data = obj.get("data")
    lr = obj.get("plan", {}).get("lr")
    if lr is not None and not is_peak_rate(lr):
        raise ValueError(f'its plan\'s "lr" is {lr!r}, not a learning rate in (0, 1]')
    return FamilySpec(
        name=obj["name"],
        kind="local",
        sizes=[SizeSpec(**s) for s in obj["sizes"]],
        tokenizer=obj["tokenizer"],
        data=DataSpec(**data) if data else None,
        root=root,
        seed=obj.get("seed"),
        corpus=obj.get("corpus", {}),
        preset=obj.get("preset"),
        references=obj.get("references", {}),
        train_dtype=obj.get("plan", {}).get("dtype", "fp32"),
        train_lr=lr,
    )


def pythia_family(name: str, data_prefix: str | None = None) -> FamilySpec:
    suffix = HUB_FAMILIES[name]
    revisions = pythia_revisions()
    sizes = [SizeSpec(size, params, f"EleutherAI/pythia-{size}{suffix}", revisions) for size, params in PYTHIA_SIZES.items()]
    return FamilySpec(
        name=name, kind="hub", sizes=sizes, tokenizer=f"EleutherAI/pythia-70m{suffix}",
        data=DataSpec(data_prefix, 2048, PYTHIA_BATCH_SIZE, "uint16"),
    )


def load_family(spec: str | Path, data: str | None = None) -> FamilySpec:
    """Resolve a family directory, a hub family name or explicit model ids/paths."""
    spec = str(spec)
    path = Path(spec)
    if (path / "family.json").is_file():
        try:
            family = _from_json(read_json(path / "family.json"), path.resolve())
        except (KeyError, TypeError, ValueError) as e:
            raise MemdynError(f"{path / 'family.json'} is not a valid family manifest ({e})") from None
        if family.data and family.data.prefix:
            family.data.prefix = str(family.root / family.data.prefix)
            if family.data.heldout_prefix:
                family.data.heldout_prefix = str(family.root / family.data.heldout_prefix)
        if data:
            family.data.prefix = data
        from dynamics.family.consistency import check_family

        check_family(family)  # tokenizer, models and data agree
        return family
    if spec in HUB_FAMILIES:
        return pythia_family(spec, data)
    if path.is_file():
        raise MemdynError(f"{path} is a file: give a family directory (memdyn family train), a model directory, "
                          f"{' or '.join(HUB_FAMILIES)}, or hub model ids")
    if path.is_dir():
        if (path / "config.json").is_file():
            return explicit_family([spec], data)
        raise MemdynError(f"{path} is neither a memdyn family (no family.json) nor a model directory (no config.json)")
    for part in spec.split(","):  # a path that does not exist is a typo, not a hub id
        part = part.strip()
        if part.startswith(("/", "./", "../", "~")) and not Path(part).expanduser().exists():
            raise MemdynError(f"{part} does not exist: give a family directory (memdyn family train), a model directory, "
                              f"{' or '.join(HUB_FAMILIES)}, or hub model ids")
    if "/" in spec or "," in spec:
        return explicit_family([s.strip() for s in spec.split(",") if s.strip()], data)
    raise MemdynError(
        f"unknown family {spec!r}: give a family directory (memdyn family train), "
        f"{' or '.join(HUB_FAMILIES)}, or comma-separated model ids/paths"
    )


def explicit_family(models: list[str], data: str | None) -> FamilySpec:
    sizes = [SizeSpec(Path(m).name or m, None, m, []) for m in models]
    data_spec = DataSpec(data, 2048, PYTHIA_BATCH_SIZE) if data else None
    return FamilySpec(name="models", kind="models", sizes=sizes, tokenizer=models[0], data=data_spec)
