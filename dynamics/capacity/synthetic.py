"""Synthetic capacity sweep (Morris et al. 2025): how many bits can a GPT-2 model store?

Data are uniformly random token sequences, so there is nothing to generalise and every bit a
model gains over H(x) is memorization. For each model of a grid (layers x width) and each
dataset size N, we train to saturation and measure

    memorized bits = sum_x max(0, H(x) - NLL_bits(x)),   H(x) = (S - 1) * log2 V.

The first token of a sequence has no context, so a causal LM cannot predict it beyond the
uniform prior: we neither score it nor count it in H(x). (The paper writes H(x) = S log2 V;
with its S = 64 the difference is 1/64 of H and it can only add free bits, never real ones.)

capacity(model) = max over N of memorized bits; alpha = capacity / params, fitted through the
origin across models. Every parameter counts, embeddings included (tied lm_head counted once),
as in the paper.

Each (model, N) is an independent job whose result is one JSON file under DIR/runs/, written
atomically; a rerun skips finished jobs. Under `accelerate launch --num_processes K` (GPUs) or
`torchrun --nproc_per_node K` (CPU: accelerate's own CPU launcher needs MPI) the jobs split by
rank and rank 0 writes the table and figures after a barrier.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dynamics.capacity.bits import model_token_logprobs, nll_bits, sequence_entropy_bits
from dynamics.capacity.membership import loss_threshold_attack
from dynamics.capacity.saturation import batch_size, train_to_saturation
from dynamics.capacity.sweep_tables import collect_table, write_outputs
from dynamics.errors import MemdynError
from dynamics.seeds import derive_seed
from dynamics.family.load import resolve_dtype
from dynamics import manifest
from dynamics.files import check_output_dir, read_json, settings_record, write_json
from dynamics.lock import locks_output

# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SweepConfig:
    """One sweep: data shape, model grid, dataset sizes and the training recipe."""

    name: str
    vocab_size: int  # V
    seq_len: int  # S
    models: tuple[tuple[int, int], ...]  # (n_layer, d_model)
    # dataset sizes as multiples of the expected capacity: N = frac * alpha_prior * params / H(x)
    data_fractions: tuple[float, ...]
    alpha_prior: float = 3.6
    head_dim: int = 4  # small heads memorize faster at these widths (see benchmarks/capacity_cpu.py)
    lr: float = 3e-2
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 50
    batch_size: int | None = None  # samples per step; None = batch_fraction of the dataset
    batch_fraction: float = 1.0  # minibatches memorize more per FLOP than the full batch
    max_steps: int = 10_000
    eval_every: int = 100
    # convergence: a plateau is `plateau_evals` evaluations gaining < plateau_tol (relative);
    # on a plateau the LR drops by lr_decay_factor, `lr_decays` times; the last plateau ends it
    plateau_evals: int = 5
    plateau_tol: float = 0.005
    lr_decays: int = 2
    lr_decay_factor: float = 0.1
    n_nonmembers: int = 1000  # fresh random sequences for membership inference (capped at N)

    def params(self, n_layer: int, d_model: int) -> int:
        return gpt2_param_count(self.vocab_size, self.seq_len, n_layer, d_model)

    def bits_per_sample(self) -> float:
        return sequence_entropy_bits(self.seq_len - 1, self.vocab_size)

    def dataset_sizes(self, n_layer: int, d_model: int) -> list[int]:
        expected = self.alpha_prior * self.params(n_layer, d_model)  # bits
        return sorted({max(2, round(f * expected / self.bits_per_sample())) for f in self.data_fractions})

    def jobs(self) -> list["Job"]:
        return [Job(L, d, n) for L, d in self.models for n in self.dataset_sizes(L, d)]


PRESETS: dict[str, SweepConfig] = {
    # 2 CPU cores, < 20 min. V=512, S=16: H(x) = 15 * 9 = 135 bits per sequence. Small
    # vocabularies (V=64) memorize markedly less per parameter at these step counts, d=8 too;
    # heads of dimension 2 memorize faster than the GPT-2 default. Minibatches of 96. Capacity
    # peaks near N = 1.0-1.5x the expected capacity (3x gave less for every model but one), and
    # four gentle LR decays (x0.3) beat two steep ones (x0.1) by ~0.04 bits/param. The models
    # are a layers x width grid like the paper's, {1, 2} x {16, 24}, 12k-27k parameters.
    "cpu": SweepConfig(
        name="cpu",
        vocab_size=512,
        seq_len=16,
        models=tuple((L, d) for L in (1, 2) for d in (16, 24)),
        data_fractions=(0.5, 1.0, 1.5),
        head_dim=2,
        lr=3e-2,
        batch_size=96,
        max_steps=20_000,
        eval_every=200,
        plateau_evals=4,
        plateau_tol=0.003,
        lr_decays=4,
        lr_decay_factor=0.3,
        n_nonmembers=1000,
    ),
    # seconds, for smoke tests of the plumbing; its numbers mean nothing
    "smoke": SweepConfig(
        name="smoke", vocab_size=8, seq_len=6, models=((1, 8), (1, 12)), data_fractions=(0.5, 2.0),
        head_dim=4, warmup_steps=5, max_steps=40, eval_every=10, plateau_evals=2, lr_decays=1,
        n_nonmembers=20,
    ),
    # Morris et al.: V 2048, S 64, layers {1,2,4,8} x d {32,64,128,256}; for GPUs.
    "paper": SweepConfig(
        name="paper",
        vocab_size=2048,
        seq_len=64,
        models=tuple((L, d) for L in (1, 2, 4, 8) for d in (32, 64, 128, 256)),
        data_fractions=(0.5, 1.0, 1.5, 2.0, 3.0),
        head_dim=16,
        lr=1e-3,
        batch_size=2048,
        max_steps=1_000_000,
        eval_every=1000,
        plateau_evals=10,
        plateau_tol=0.002,
    ),
}


@dataclass(frozen=True)
class Job:
    n_layer: int
    d_model: int
    n_samples: int

    @property
    def key(self) -> str:
        return f"L{self.n_layer}-d{self.d_model}-N{self.n_samples}"


# ---------------------------------------------------------------------------------------------
# model and data


def gpt2_param_count(vocab_size: int, seq_len: int, n_layer: int, d_model: int) -> int:
    """Parameters of GPT2LMHeadModel with tied embeddings and n_positions = seq_len.

    wte V*d + wpe S*d + per layer (ln 2*2d, attn 4d^2+4d, mlp 8d^2+5d) + ln_f 2d.
    Paper check: V=2048, S=64, 1 layer, d=32 -> 80,352.
    """
    d = d_model
    return vocab_size * d + seq_len * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def make_model(cfg: SweepConfig, n_layer: int, d_model: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_head = max(1, d_model // cfg.head_dim)
    config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=d_model, n_layer=n_layer,
        n_head=n_head, n_inner=4 * d_model,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # memorization: no regularisation
        bos_token_id=0, eos_token_id=0,  # no special tokens in random data; keeps config valid
    )
    torch.manual_seed(seed)  # GPT-2 init draws from the global generator
    model = GPT2LMHeadModel(config)
    n = sum(p.numel() for p in model.parameters())  # tied lm_head is the same tensor: once
    assert n == cfg.params(n_layer, d_model), (n, cfg.params(n_layer, d_model))
    return model


def random_tokens(n: int, seq_len: int, vocab_size: int, seed: int) -> torch.Tensor:
    """(n, seq_len) int64 tokens, i.i.d. uniform over the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n, seq_len), generator=g)


# ---------------------------------------------------------------------------------------------
# resources


def estimate_bytes(cfg: SweepConfig, job: Job, dtype: torch.dtype) -> int:
    """Rough peak training memory: weights + grads + Adam moments + activations of one batch.

    Activations per token and layer follow Korthikanti et al. (~34 d + 5 heads S values); the
    logits and their softmax gradient are kept in fp32 by the loss (3 V floats per token).
    """
    p = cfg.params(job.n_layer, job.d_model)
    item = torch.finfo(dtype).bits // 8
    n_head = max(1, job.d_model // cfg.head_dim)
    tokens = max(batch_size(cfg, job.n_samples), min(job.n_samples, 1024)) * cfg.seq_len  # train or eval
    act = tokens * (job.n_layer * (34 * job.d_model + 5 * n_head * cfg.seq_len) * item + 3 * cfg.vocab_size * 4)
    return 4 * p * item + act


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(cfg: SweepConfig, jobs: list[Job], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before any training, a job whose estimated memory exceeds what is free."""
    free = available_bytes(device)
    for job in jobs:
        need = estimate_bytes(cfg, job, dtype)
        if need > 0.8 * free:
            raise MemdynError(
                f"job {job.key} needs about {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is "
                f"free on {device.type}; use a smaller preset or set a batch size")


# ---------------------------------------------------------------------------------------------
# one job


def run_job(cfg: SweepConfig, job: Job, seed: int, dtype: str, device: torch.device,
            progress=None, checkpoint: Path | None = None) -> dict:
    """Train one (model, N) to saturation (resuming from `checkpoint` if given and there); measure
    memorized bits and membership inference."""
    torch_dtype = resolve_dtype(dtype, device)
    H = cfg.bits_per_sample()
    data = random_tokens(job.n_samples, cfg.seq_len, cfg.vocab_size,
                         derive_seed(seed, 1, cfg.vocab_size, cfg.seq_len, job.n_samples)).to(device)
    model = make_model(cfg, job.n_layer, job.d_model, derive_seed(seed, 2, job.n_layer, job.d_model))
    model = model.to(device=device, dtype=torch_dtype)
    params = cfg.params(job.n_layer, job.d_model)
    t0 = time.time()
    result = train_to_saturation(model, data, cfg, derive_seed(seed, 3, job.n_samples), H, progress, checkpoint)
    wall = time.time() - t0

    nll_members = nll_bits(model_token_logprobs(model, data)).numpy()  # (N,) bits
    memorized = float(np.clip(H - nll_members, 0, None).sum())
    n_non = min(job.n_samples, cfg.n_nonmembers)
    nonmembers = random_tokens(n_non, cfg.seq_len, cfg.vocab_size,
                               derive_seed(seed, 4, cfg.vocab_size, cfg.seq_len, job.n_samples)).to(device)
    nll_non = nll_bits(model_token_logprobs(model, nonmembers)).numpy()  # (n_non,) bits
    # balanced classes (F1 depends on the ratio): as many members as non-members, drawn at random
    pick = np.random.default_rng(derive_seed(seed, 6, job.n_samples)).permutation(job.n_samples)[:n_non]
    # the clipped sum also credits chance: a never-seen sequence can score NLL < H by luck.
    # chance_bits = what N fresh sequences would "memorize"; large N inflates the max over N
    chance = float(np.clip(H - nll_non, 0, None).mean()) * job.n_samples
    attack = loss_threshold_attack(nll_members[pick], nll_non, seed=derive_seed(seed, 5, job.n_samples))
    return dict(
        preset=cfg.name, n_layer=job.n_layer, d_model=job.d_model, n_head=max(1, job.d_model // cfg.head_dim),
        params=params, n_samples=job.n_samples, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len,
        tokens_per_param=job.n_samples * cfg.seq_len / params,
        dataset_bits=job.n_samples * H, memorized_bits=memorized, bits_per_param=memorized / params,
        chance_bits=chance, excess_bits_per_param=(memorized - chance) / params,
        converged=result.converged, steps=result.steps,
        f1=attack.f1, f1_oracle=attack.f1_oracle, f1_median=attack.f1_median, auroc=attack.auroc,
        dtype=dtype, seed=seed, device=device.type, train_seconds=round(wall, 2), curve=result.curve,
    )


def _json_rows(path: Path) -> int:
    """A finished job's record counts as one row when it parses (adopting records from before manifests)."""
    read_json(path)
    return 1


@locks_output("out_dir")
def run_sweep(cfg: SweepConfig, out_dir: str | os.PathLike, seed: int = 0, dtype: str = "fp32",
              threads: int | None = None, log=print) -> dict | None:
    """Run (or resume) the sweep; returns the summary on the main process, None elsewhere."""
    from accelerate import PartialState
    from tqdm import tqdm

    out_dir = Path(out_dir)
    # cpu=True without a GPU: only then does accelerate take torchrun's ranks as MULTI_CPU
    state = PartialState(cpu=not torch.cuda.is_available())
    device = state.device
    if threads:
        torch.set_num_threads(threads)
    resolve_dtype(dtype, device)
    jobs = cfg.jobs()
    check_memory(cfg, jobs, resolve_dtype(dtype, device), device)
    settings = json.loads(json.dumps(dict(config=dataclasses.asdict(cfg), seed=seed, dtype=dtype)))
    check_output_dir(out_dir, "config.json", settings, "capacity sweep")
    state.wait_for_everyone()  # everyone has read config.json before rank 0 writes it
    if state.is_main_process:
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", settings_record(settings))
        manifest.expect(out_dir, [f"runs/{j.key}.json" for j in jobs])
    state.wait_for_everyone()

    mine = jobs[state.process_index::state.num_processes]
    todo = [j for j in mine if not manifest.settle(out_dir, f"runs/{j.key}.json", 1, _json_rows)]
    if len(todo) < len(mine):
        log(f"[rank {state.process_index}] {len(mine) - len(todo)} of {len(mine)} jobs already done; skipping them")
    for job in tqdm(todo, desc=f"capacity[{state.process_index}]", disable=not todo, position=state.process_index):
        resume = out_dir / "runs" / f"{job.key}.resume.pt"  # the running job's last evaluation
        row = run_job(cfg, job, seed, dtype, device, checkpoint=resume)
        write_json(out_dir / "runs" / f"{job.key}.json", row)
        manifest.record_part(out_dir, f"runs/{job.key}.json", 1)
        resume.unlink(missing_ok=True)
        flag = "" if row["converged"] else "  NOT CONVERGED (hit max_steps)"
        log(f"{job.key}: {row['memorized_bits']:.0f} bits, {row['bits_per_param']:.2f} bits/param, "
            f"{row['steps']} steps, {row['train_seconds']:.0f}s, F1 {row['f1']:.3f}{flag}")
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    table = collect_table(out_dir, jobs)
    return write_outputs(out_dir, table, cfg)
