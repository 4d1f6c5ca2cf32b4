"""A small Transformer encoder that reads a context (token ids) or a model's hidden states
(+ per-position channels) and predicts the memorization class, the score, and (hidden mode)
per-token matches.

Two defects of the paper's predictor are fixed here: positions are encoded (learned or
sinusoidal), and the encoder runs batch_first=True on [B, T, d] inputs.

Hidden mode (the last n_channels input features are per-position scalars: entropy and surprisal
of the fed token, predictor.data.HIDDEN_CHANNELS): ~200 training rows are too few for a d-wide hidden state
per position, which lets the encoder memorise its training rows, so the hidden states pass through
a hidden_proj-dimensional bottleneck and, in training, the whole hidden-state path of a row is
dropped with probability hidden_dropout. The channels are standardised with statistics of the
training rows (buffers, saved with the weights). A continuation is memorized only if its weakest
greedy step is confident, so the sequence heads read the max over positions beside the mean, and
the channels' mean and max over context and continuation directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class PredictorConfig:
    input: str = "context"  # context: token ids [B, T] | hidden: features [B, T, n_features]
    vocab_size: int = 0  # context mode
    n_features: int = 0  # hidden mode: d_model of the target model + n_channels
    n_channels: int = 0  # hidden mode: per-position channels at the end of the features
    context_len: int = 0  # hidden mode: positions < context_len are the context
    hidden_proj: int = 8  # hidden mode: width of the hidden-state bottleneck
    hidden_dropout: float = 0.5  # hidden mode: chance a row's hidden-state path is dropped in training
    max_len: int = 64  # longest input the positional encoding covers
    n_classes: int = 3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    positional: str = "learned"  # learned | sinusoidal
    members: int = 1  # encoders trained from different initialisations, probabilities averaged

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal(max_len: int, d: int) -> torch.Tensor:
    """[max_len, d] fixed encodings of Vaswani et al."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class MemPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.channels = cfg.n_channels if cfg.input == "hidden" else 0
        head_in = d
        if cfg.input == "context":
            self.embed = nn.Embedding(cfg.vocab_size, d)
        else:  # hidden states differ in scale across models: normalise before projecting
            if not 0 < cfg.n_channels < cfg.n_features:
                raise ValueError(f"hidden mode needs 0 < n_channels < n_features, got {cfg.n_channels}, {cfg.n_features}")
            width = cfg.n_features - self.channels
            self.embed = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.hidden_proj), nn.Dropout(cfg.dropout),
                                       nn.Linear(cfg.hidden_proj, d))
            self.embed_channels = nn.Linear(self.channels, d)
            self.register_buffer("channel_mean", torch.zeros(self.channels))
            self.register_buffer("channel_std", torch.ones(self.channels))
            head_in = 2 * d + 4 * self.channels  # mean and max of h; channels' mean and max per segment
        if cfg.positional == "learned":
            self.pos = nn.Embedding(cfg.max_len, d)
        else:
            self.register_buffer("pe", sinusoidal(cfg.max_len, d), persistent=False)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True)
        # dropout on the residual and feed-forward paths, not on the attention weights: there it takes
        # attention down PyTorch's slow CPU path (a training step of batch 32, one thread: context
        # mode 26.4 against 22.4 ms, hidden mode 18.1 against 15.9)
        layer.self_attn.dropout = 0.0
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.cls_head = nn.Linear(head_in, cfg.n_classes)
        self.score_head = nn.Linear(head_in, 1)
        self.token_head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: [B, T] ids or [B, T, F] features; mask: [B, T] bool, True at real positions.
        Returns logits [B, C], score [B] in (0, 1), token_logits [B, T]."""
        B, T = x.shape[:2]
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        pos = self.pos.weight[:T] if self.cfg.positional == "learned" else self.pe[:T]  # [T, d]
        if self.channels:
            chan = (x[..., -self.channels :] - self.channel_mean) / self.channel_std  # [B, T, n_channels]
            hid = self.embed(x[..., : -self.channels])
            if self.training and self.cfg.hidden_dropout:
                keep = torch.rand(B, 1, 1, device=x.device) >= self.cfg.hidden_dropout
                hid = hid * keep / (1 - self.cfg.hidden_dropout)
            h = hid + self.embed_channels(chan) + pos
        else:
            h = self.embed(x) + pos  # [B, T, d]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))  # [B, T, d]
        pooled = masked_mean(h, mask)  # [B, d]
        if self.channels:
            k = self.cfg.context_len
            pooled = torch.cat([pooled, masked_max(h, mask), masked_mean(chan[:, :k], mask[:, :k]),
                                masked_max(chan[:, :k], mask[:, :k]), masked_mean(chan[:, k:], mask[:, k:]),
                                masked_max(chan[:, k:], mask[:, k:])], -1)
        return {
            "logits": self.cls_head(pooled),
            "score": torch.sigmoid(self.score_head(pooled)[:, 0]),
            "token_logits": self.token_head(h)[..., 0],
        }

    def fit_channels(self, x: torch.Tensor) -> None:
        """Standardise the channels with the statistics of training inputs x [n, T, F]."""
        if self.channels:
            chan = x[..., -self.channels :].reshape(-1, self.channels).float()
            self.channel_mean.copy_(chan.mean(0))
            self.channel_std.copy_(chan.std(0).clamp(min=1e-6))


class MemPredictorEnsemble(nn.Module):
    """cfg.members MemPredictors of one architecture, each trained from its own initialisation;
    the ensemble predicts their averaged probabilities. With ~200 training rows one predictor's
    ranking depends on its initialisation (hidden mode on the tiny 4.2m model: AUROC 0.74-0.90 over
    nine runs); averaging a few removes most of that spread."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(MemPredictor(cfg) for _ in range(cfg.members))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """As MemPredictor.forward; logits are log mean probabilities, token_logits logit mean probabilities."""
        outs = [m(x, mask) for m in self.members]
        proba = torch.stack([o["logits"].softmax(-1) for o in outs]).mean(0)
        token_proba = torch.stack([torch.sigmoid(o["token_logits"]) for o in outs]).mean(0)
        return {
            "logits": proba.log(),
            "score": torch.stack([o["score"] for o in outs]).mean(0),
            "token_logits": torch.logit(token_proba, eps=1e-7),
        }


def masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, F], [B, T] bool -> [B, F] mean over the real positions."""
    m = mask[..., None].to(v.dtype)
    return (v * m).sum(1) / m.sum(1).clamp(min=1)


def masked_max(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, F], [B, T] bool -> [B, F] max over the real positions (0 where there are none)."""
    out = v.masked_fill(~mask[..., None], float("-inf")).amax(1)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out)


def loss_fn(out: dict, label: torch.Tensor, score: torch.Tensor, class_weight: torch.Tensor | None,
            token_labels: torch.Tensor | None = None, k: int = 0) -> torch.Tensor:
    """Class cross-entropy + score MSE (+ per-token BCE on continuation positions k.. in hidden mode)."""
    loss = F.cross_entropy(out["logits"], label, weight=class_weight) + F.mse_loss(out["score"], score)
    if token_labels is not None:
        loss = loss + F.binary_cross_entropy_with_logits(out["token_logits"][:, k:], token_labels.float())
    return loss
