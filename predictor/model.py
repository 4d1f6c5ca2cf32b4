"""A small Transformer encoder that reads a context (token ids) or a model's hidden states
(+ entropy) and predicts the memorization class, the score, and (hidden mode) per-token matches.

Two defects of the paper's predictor are fixed here: positions are encoded (learned or
sinusoidal), and the encoder runs batch_first=True on [B, T, d] inputs.
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
    n_features: int = 0  # hidden mode: d_model of the target model + 1 (entropy)
    max_len: int = 64  # longest input the positional encoding covers
    n_classes: int = 3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    positional: str = "learned"  # learned | sinusoidal

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
        if cfg.input == "context":
            self.embed = nn.Embedding(cfg.vocab_size, d)
        else:  # hidden states differ in scale across models: normalise before projecting
            self.embed = nn.Sequential(nn.LayerNorm(cfg.n_features), nn.Linear(cfg.n_features, d))
        if cfg.positional == "learned":
            self.pos = nn.Embedding(cfg.max_len, d)
        else:
            self.register_buffer("pe", sinusoidal(cfg.max_len, d), persistent=False)
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.cls_head = nn.Linear(d, cfg.n_classes)
        self.score_head = nn.Linear(d, 1)
        self.token_head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: [B, T] ids or [B, T, F] features; mask: [B, T] bool, True at real positions.
        Returns logits [B, C], score [B] in (0, 1), token_logits [B, T]."""
        B, T = x.shape[:2]
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        pos = self.pos.weight[:T] if self.cfg.positional == "learned" else self.pe[:T]  # [T, d]
        h = self.embed(x) + pos  # [B, T, d]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))  # [B, T, d]
        m = mask[..., None].to(h.dtype)  # [B, T, 1]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # [B, d] masked mean
        return {
            "logits": self.cls_head(pooled),
            "score": torch.sigmoid(self.score_head(pooled)[:, 0]),
            "token_logits": self.token_head(h)[..., 0],
        }


def loss_fn(out: dict, label: torch.Tensor, score: torch.Tensor, class_weight: torch.Tensor | None,
            token_labels: torch.Tensor | None = None, k: int = 0) -> torch.Tensor:
    """Class cross-entropy + score MSE (+ per-token BCE on continuation positions k.. in hidden mode)."""
    loss = F.cross_entropy(out["logits"], label, weight=class_weight) + F.mse_loss(out["score"], score)
    if token_labels is not None:
        loss = loss + F.binary_cross_entropy_with_logits(out["token_logits"][:, k:], token_labels.float())
    return loss
