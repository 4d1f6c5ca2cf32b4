"""Family presets: corpus budget, tokenizer, model sizes and training schedule.

`micro` is for tests (under a minute on 2 CPU cores), `tiny` is the embedded default (a few
minutes on 2 CPU cores), `small` is sized for one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamics.corpus.world import CanarySettings, Duplication
from dynamics.errors import MemdynError


def is_peak_rate(lr) -> bool:
    """Whether `lr` can be a peak learning rate: a number in (0, 1]."""
    return isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr <= 1


@dataclass(frozen=True)
class ModelShape:
    layers: int
    d_model: int
    heads: int
    lr: float | None = None  # peak learning rate of this size (None: the preset's); larger sizes need lower, as in Pythia


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int
    seq_length: int  # samples hold seq_length + 1 tokens, as Pythia's 2049
    corpus_chars: int | None  # characters taken from the (seed-shuffled) corpus; None = all
    max_doc_chars: int | None  # long documents are cut so many documents fit the budget
    heldout_fraction: float
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    shapes: tuple[ModelShape, ...]
    # the preset's scoring grid; max(contexts) + max(continuations) must fit in seq_length + 1
    contexts: tuple[int, ...] = field(default=(32, 48, 64, 96))
    continuations: tuple[int, ...] = field(default=(16, 32, 48, 64))
    # the world (dynamics/corpus/world.py): documents are taken until the stream fills one pass of
    # `steps` x `batch_size` samples (a smaller corpus is trained on for several epochs)
    duplication: Duplication = field(default=Duplication())
    canaries: CanarySettings = field(default=CanarySettings())
    # one reference model for unintended memorization, trained for one pass over `reference_samples`
    # samples of documents the world does not use (None: no reference data)
    reference_shape: ModelShape | None = None
    reference_samples: int = 0
    members: int = 512  # training samples whose unintended memorization is measured (seeded subset)
    # the held-out split is filled up to so many samples with documents that neither the world nor the
    # reference uses (None: the world's held-out documents alone), so that non-members, like members,
    # come from many documents (duplicated by the training rule); `memdyn run`'s membership stage draws
    # `membership_samples` of each side
    heldout_samples: int | None = None
    membership_samples: int | None = None
    # training samples `memdyn run` scores, among those that hold no canary copy (a seeded subset; None: all)
    scored_samples: int | None = None
    # training samples `memdyn run` scores at every checkpoint (a seeded subset of the same pool; None:
    # scored_samples): the checkpoint-wise table costs one forward pass per sample, size and checkpoint
    checkpoint_samples: int | None = None
    predictor_epochs: int = 20  # `memdyn run` trains each predictor (and each fold) for so many epochs
    predictor_folds: int = 5  # `memdyn run` cross-validates each predictor over so many folds by document
    # `memdyn run`'s dynamics stage draws so many sequences per score level, and so many at random
    # (whose natural class mix the hidden-state predictors train on)
    dynamics_per_group: int = 200
    # `memdyn run` adds UMAP maps to the PCA ones (numba compiles UMAP's kernels once per machine
    # and cache directory, 20-40 s: the test preset, run on fresh machines, goes without)
    umap: bool = True

    # the first log-spaced checkpoint (Pythia's run from step1). tiny's steps 1 and 4 added 2/9 to
    # the checkpoint-wise stages and nothing to see: mean score 0.0007-0.0022 at step1 as 0.0004-0.0005
    # at step0, 0.02-0.04 at step4 as at step16, no sample memorized at any of them
    first_log_step: int = 1

    def peak_rate(self, shape: ModelShape) -> float:
        """The peak learning rate a shape trains at: its own, else the preset's."""
        return self.lr if shape.lr is None else shape.lr

    def peak_rates(self, common: float | None = None) -> list[float]:
        """Each shape's peak learning rate: `common` where one is given (`--lr`), else peak_rate's."""
        return [common if common is not None else self.peak_rate(s) for s in self.shapes]

    def checkpoint_steps(self) -> list[int]:
        """Pythia-like: step0, log-spaced early steps (powers of 4 from first_log_step) before the
        first quarter, the quarters and the final step (as Pythia's log-spaced steps precede its
        evenly spaced ones)."""
        quarters = [self.steps * q // 4 for q in (1, 2, 3, 4)]
        early = (4**i for i in range(16) if self.first_log_step <= 4**i < quarters[0])
        return sorted({0, *quarters, *early})


PRESETS: dict[str, Preset] = {
    "micro": Preset(
        name="micro", vocab_size=384, seq_length=32, corpus_chars=60_000, max_doc_chars=300,
        heldout_fraction=0.2, batch_size=4, steps=200, lr=1e-2, warmup_steps=10,
        shapes=(ModelShape(1, 16, 2), ModelShape(1, 32, 2), ModelShape(2, 64, 4)),
        contexts=(8, 16), continuations=(4, 8, 16),
        duplication=Duplication(share=0.4, max_copies=64, doc_tokens=96),
        canaries=CanarySettings(counts=(1, 4, 16), length=12),
        reference_shape=ModelShape(2, 64, 4), reference_samples=800, members=128, predictor_epochs=6,
        heldout_samples=96, membership_samples=64,
        predictor_folds=2, umap=False, first_log_step=16,
    ),
    "tiny": Preset(
        name="tiny", vocab_size=2048, seq_length=160, corpus_chars=1_500_000, max_doc_chars=12_000,
        heldout_fraction=0.1, batch_size=8, steps=400, lr=1e-2, warmup_steps=40,
        # 4.2m diverges from its best loss at lr 1e-2 (3.2-3.7 nats at the end against 2.3 for 617k)
        shapes=(ModelShape(2, 96, 3), ModelShape(3, 160, 5), ModelShape(4, 256, 8, lr=3e-3)),
        duplication=Duplication(share=0.2, max_copies=100, doc_tokens=400),
        # Canaries: one per (kind, count, insertion point), and five more of each kind late, two at 16 copies,
        # two at 32 and one at 64, where the sizes differ (early ones are forgotten by the end, middle ones nearly so;
        # 1-8 copies are reproduced by no size). With one per cell and a second at 64 everywhere (48
        # canaries, 1146 copies), memorization rose with size in four draws of four but was decided in one
        # (4.2m - 617k +2.1 to +12.5 pts, the interval's lower end 0 in three); with these (52, 1082
        # copies; whole runs of seeds 0-3) +9.62 / +7.69 / +3.85 / +7.69 pts, decided in three, and the four
        # runs passed 100 of 120 checks against 98. Twice the canaries everywhere (84, 14% of the stream)
        # decided it in two of three draws and lost three other checks (22 and 23 of 30 PASS against 25 and 24).
        canaries=CanarySettings(counts=(1, 2, 4, 8, 16, 32, 64), length=48,
                                extra=(("late", 16), ("late", 16), ("late", 32), ("late", 32), ("late", 64))),
        # the reference has the middle size's shape: 1.6m trained on 3200 disjoint samples costs a third of
        # 4.2m's training and still codes the members far below the unigram model (see README)
        reference_shape=ModelShape(3, 160, 5), reference_samples=3200, members=512, scored_samples=2000,
        checkpoint_samples=1000, first_log_step=16,
        # the world's own held-out documents are 19 (four of them codec tables, 40% of their 272 samples), none
        # duplicated: an untrained 4.2m told them from the members at AUROC 0.64 (zlib ratio) and 0.66 (reference
        # ratio); with these 2000, 0.495 and 0.568 (benchmarks/FINDINGS.md, "Members and non-members drawn alike")
        heldout_samples=2000, membership_samples=256,
        # 3 folds of 10 epochs: the stage takes 312 s instead of 938; the context predictors' AUROC
        # moves from 0.83 / 0.80 / 0.77 (617k / 1.6m / 4.2m, 5 folds of 20) to 0.85 / 0.75 / 0.69
        predictor_epochs=10, predictor_folds=3,
        # 400: the unigram-count drop for unmemorized samples, heavy-tailed, is decided in 10 of 12 size x draw
        # cases (at 200: 5, intervals +-450 to +-550 over 226-271 samples), and the hidden-state predictors
        # see twice the memorized rows; the run takes about 75 s more (benchmarks/FINDINGS.md)
        dynamics_per_group=400,
    ),
    "small": Preset(
        name="small", vocab_size=16384, seq_length=256, corpus_chars=None, max_doc_chars=None,
        heldout_fraction=0.05, batch_size=64, steps=20_000, lr=6e-4, warmup_steps=500,
        shapes=(ModelShape(4, 128, 4), ModelShape(6, 256, 8), ModelShape(8, 512, 8), ModelShape(12, 768, 12)),
        duplication=Duplication(share=0.05, max_copies=100, doc_tokens=1024),
        canaries=CanarySettings(counts=(1, 2, 4, 8, 16, 32, 64), length=64),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MemdynError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
