"""Training one synthetic-capacity job to saturation (dynamics/capacity/synthetic.py): Adam with
reduce-on-plateau until the memorized bits stop growing, resumable from its last evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from dynamics.capacity.bits import model_token_logprobs, nll_bits, token_logprobs
from dynamics.files import atomic_path, canonical

if TYPE_CHECKING:
    from dynamics.capacity.synthetic import SweepConfig


def batch_size(cfg: SweepConfig, n: int) -> int:
    return min(n, cfg.batch_size or max(1, round(cfg.batch_fraction * n)))


def detect_plateau(values, window: int, rel_tol: float) -> bool:
    """True when the last `window` evaluations gained less than rel_tol (relative) over the
    best value before them. Noise-tolerant: compares with the running best, not one point."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= window:
        return False
    before, last = v[:-window].max(), v[-1]
    return last - before <= rel_tol * max(abs(last), 1e-12)


@dataclass
class TrainResult:
    steps: int
    converged: bool
    curve: list = field(default_factory=list)  # [step, memorized bits, lr]


def train_to_saturation(model, data: torch.Tensor, cfg: SweepConfig, seed: int,
                        entropy_bits: float, progress=None, checkpoint: Path | None = None) -> TrainResult:
    """Adam on next-token loss until the memorized bits plateau at the lowest LR.

    data: (N, S) on the model's device. Reduce-on-plateau: a plateau at the current LR drops it
    by lr_decay_factor; a plateau after `lr_decays` drops is convergence, and so is memorizing
    all but plateau_tol of the dataset's bits. Hitting max_steps first: converged=False.
    checkpoint: a file that holds the whole training state after every evaluation, so a killed
    job resumes from its last evaluation and ends exactly as an uninterrupted one.
    """
    n = data.shape[0]
    bs = batch_size(cfg, n)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    g = torch.Generator(device="cpu").manual_seed(seed)  # minibatch order
    # everything the loop changes besides the model, optimizer and generators (saved as is)
    loop = {"order": torch.randperm(n, generator=g), "pos": 0, "lr": cfg.lr, "decays_left": cfg.lr_decays,
            "curve": [], "bits_hist": []}
    first = 1
    if checkpoint is not None and checkpoint.is_file():
        first = _restore(checkpoint, model, opt, g, loop) + 1
    model.train()
    for step in range(first, cfg.max_steps + 1):
        for group in opt.param_groups:
            group["lr"] = loop["lr"] * min(1.0, step / cfg.warmup_steps)
        if bs == n:
            batch = data  # (N, S)
        else:  # epochs of shuffled minibatches; the tail of an epoch is dropped
            if loop["pos"] + bs > n:
                loop["order"], loop["pos"] = torch.randperm(n, generator=g), 0
            batch = data[loop["order"][loop["pos"]:loop["pos"] + bs].to(data.device)]  # (bs, S)
            loop["pos"] += bs
        logits = model(batch).logits  # (B, S, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        bits = _memorized_bits(model, data, batch, logits if bs == n else None, entropy_bits)
        loop["curve"].append([step, round(bits, 3), loop["lr"]])
        loop["bits_hist"].append(bits)
        if progress is not None:
            progress(step, bits, loop["lr"])
        if bits >= (1 - cfg.plateau_tol) * n * entropy_bits:  # (almost) all data memorized: done
            return TrainResult(step, True, loop["curve"])
        if detect_plateau(loop["bits_hist"], cfg.plateau_evals, cfg.plateau_tol):
            if loop["decays_left"] == 0:
                return TrainResult(step, True, loop["curve"])
            loop["decays_left"] -= 1
            loop["lr"] *= cfg.lr_decay_factor
            loop["bits_hist"] = [bits]  # the next plateau is judged at the new LR only
        if checkpoint is not None:
            _save(checkpoint, step, model, opt, g, loop)
    return TrainResult(cfg.max_steps, False, loop["curve"])


def _memorized_bits(model, data, batch, logits, entropy_bits: float) -> float:
    """Memorized bits of all of `data`; full batch (logits given): this step's pre-update logits
    are reused instead of a new forward pass."""
    if logits is not None:
        with torch.no_grad():
            per_sample = nll_bits(token_logprobs(logits.detach(), batch))
    else:
        per_sample = nll_bits(model_token_logprobs(model, data))
    return float((entropy_bits - per_sample).clamp(min=0).sum())


def _save(checkpoint: Path, step: int, model, opt, g: torch.Generator, loop: dict) -> None:
    state = {"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "g": g.get_state(),
             "rng": torch.get_rng_state(), **loop}
    with atomic_path(checkpoint) as tmp:
        torch.save(canonical(state), tmp)


def _restore(checkpoint: Path, model, opt, g: torch.Generator, loop: dict) -> int:
    """Load a saved training state into model, opt, g and loop; returns its step."""
    st = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    g.set_state(st["g"])
    torch.set_rng_state(st["rng"])
    loop.update({k: st[k] for k in loop})
    return st["step"]
