"""One entry point from a family spec to models and tokenizers, on a chosen device and dtype."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dynamics.errors import MemdynError
from dynamics.family.spec import FamilySpec, SizeSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | None = None) -> torch.device:
    """'auto' (or None): the accelerator accelerate would pick for this process, else the CPU."""
    if device in (None, "auto"):
        from accelerate import PartialState

        return PartialState().device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MemdynError(f"--device {device!r} is unknown: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemdynError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> the torch dtype, checked against the device (the one table of dtypes)."""
    if dtype not in DTYPES:
        raise MemdynError(f"--dtype {dtype!r} is unknown: choose one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        raise MemdynError("dtype fp16 is not supported on the CPU: use --dtype fp32 or bf16")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MemdynError("this GPU does not support bf16: use --dtype fp32 or fp16")
    return DTYPES[dtype]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~"))


def _hub_error(what: str, model_id: str, revision: str | None, error: Exception) -> MemdynError:
    rev = f" at revision {revision}" if revision else ""
    why = "offline (HF_HUB_OFFLINE=1) and" if _offline() else "the hub could not be reached or it does not exist, and"
    return MemdynError(
        f"{what} {model_id!r}{rev} is not available: {why} there is no local copy in the Hugging Face cache; "
        f"download it where the hub is reachable (`hf download {model_id}"
        f"{' --revision ' + revision if revision else ''}`) and copy the cache, or pass a local path"
        f" [{type(error).__name__}]"
    )


def model_location(family: FamilySpec, size: SizeSpec, revision: str | None) -> tuple[str, str | None]:
    """(from_pretrained path or id, hub revision or None) for a size at a revision."""
    revision = family.revision(size, revision)
    if family.kind == "local":
        path = family.root / size.path / revision
        if not (path / "config.json").is_file():
            raise MemdynError(
                f"checkpoint {revision} of model {size.name!r} is missing in {family.root} "
                "(rerun `memdyn family train` with the same arguments to finish it)"
            )
        check_checkpoint(path, f"checkpoint {revision} of model {size.name!r}")
        return str(path), None
    return size.path, revision


def check_checkpoint(path: Path, what: str) -> None:
    """A local checkpoint's files are whole: config.json parses and every safetensors file is as
    long as its header says (a truncated copy fails here, before any work, not in the middle)."""
    import json

    fix = "restore it, or rerun the `memdyn family train` command that wrote it"
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise MemdynError(f"{what}: {path / 'config.json'} is unreadable or truncated ({e}); {fix}") from None
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise MemdynError(f"{what}: {path} holds no model weights (model.safetensors); {fix}")
    for file in weights:
        if file.suffix == ".safetensors" and not _whole_safetensors(file):
            raise MemdynError(f"{what}: {file} is truncated or corrupt ({file.stat().st_size} bytes); {fix}")


def _whole_safetensors(file: Path) -> bool:
    """The file holds the 8-byte header length, the JSON header and every tensor it lists."""
    import json
    import struct

    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return False
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0) == size


def load_model(
    family: FamilySpec,
    size: SizeSpec | str,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
):
    """An `AutoModelForCausalLM` in eval mode. On CUDA, models too large for one device are
    spread with accelerate's device placement (`device_map="auto"`)."""
    size = family.size(size) if isinstance(size, str) else size
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    location, hub_revision = model_location(family, size, revision)
    kwargs = {"dtype": torch_dtype}
    if dev.type == "cuda" and torch.cuda.device_count() > 1 and family.kind != "local":
        kwargs["device_map"] = "auto"
    model = _from_pretrained("model", location, hub_revision, **kwargs)
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    return model


def load_reference_model(location: str, device: torch.device | str, dtype: str = "fp32"):
    """A reference model (a directory or a hub id), in eval mode on `device`: the model that did not
    train on the samples, for unintended memorization and the reference attack."""
    device = torch.device(device)  # (worker processes get the device's name)
    return _from_pretrained("reference model", location, None, dtype=resolve_dtype(dtype, device)).to(device).eval()


def _from_pretrained(what: str, location: str, revision: str | None, **kwargs):
    """AutoModelForCausalLM.from_pretrained, with a one-line error for a directory that holds no
    model and for a hub model that is not available (offline or not found)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(location, revision=revision, **kwargs)
    except (OSError, ValueError) as e:  # a config.json missing or of no known model type: ValueError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _is_local(location):
            raise MemdynError(f"{location}: not a loadable model directory ({first})") from None
        if isinstance(e, ValueError):
            raise MemdynError(f"{what} {location!r}: not a loadable model ({first})") from None
        raise _hub_error(what, location, revision, e) from None


def load_tokenizer(family: FamilySpec):
    from transformers import AutoTokenizer

    location = str(family.root / family.tokenizer) if family.kind == "local" else family.tokenizer
    try:
        return AutoTokenizer.from_pretrained(location)
    except OSError as e:
        if _is_local(location):
            raise MemdynError(f"{location}: not a loadable tokenizer directory") from None
        raise _hub_error("tokenizer", location, None, e) from None


def check_vocab(tokenizer, model, name: str) -> None:
    """The tokenizer must not produce ids the model has no embedding for (Pythia pads its
    embedding matrix, so the model may have more rows than the tokenizer has tokens)."""
    n_model = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_model:
        raise MemdynError(
            f"tokenizer/model vocabulary mismatch for {name}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model embeds only {n_model}; use the tokenizer the model was trained with"
        )


def check_data_vocab(max_token: int, vocab_size: int, data: str, name: str) -> None:
    if max_token >= vocab_size:
        raise MemdynError(
            f"{data} holds token id {max_token} but model {name} has a vocabulary of {vocab_size}: "
            "the data was tokenized with another tokenizer"
        )
