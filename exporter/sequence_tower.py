"""The sequence user tower in torch: query = u + SeqEncoder(last L history item rows).

The formulas, the layout of the inputs (right-aligned, mask) and the tables it is served from
are in model_repository.sequence_tower, whose NumpySequenceTower is this module's twin (tests
check torch == ONNX == numpy). Dropout (``dropout``) is on the embedded window, the attention
output and the FFN output, in training only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model_repository import retrieve_schema as schema
from model_repository.sequence_tower import LAYER_NORM_EPS, MASK_PENALTY, NumpySequenceTower

INIT_STD = 0.05  # exporter.train.INIT_STD: positions start at the item rows' scale


class _Block(nn.Module):
    """Pre-LayerNorm single-head attention + FFN, both residual."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dim = dim  # a Python int: x.shape[-1] is a tensor while the ONNX exporter traces
        self.attn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn_in = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(dim, hidden)
        self.ffn_out = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_penalty: torch.Tensor, *, last_only: bool
                ) -> torch.Tensor:
        dim = self.dim
        a = self.attn_norm(x)
        w, b = self.attn_in.weight, self.attn_in.bias
        kv = a @ w[dim:].T + b[dim:]
        if last_only:  # only the last position is read: the same result, L times less work
            x, a = x[:, -1:], a[:, -1:]
        q = a @ w[:dim].T + b[:dim]
        logits = q @ kv[..., :dim].transpose(1, 2) / math.sqrt(dim) + key_penalty
        x = x + self.drop(self.attn_out(torch.softmax(logits, dim=-1) @ kv[..., dim:]))
        return x + self.drop(self.ffn_out(torch.relu(self.ffn_in(self.ffn_norm(x)))))


class SequenceTower(nn.Module):
    """(user_emb (B, d), rows (B, L, d), mask (B, L)) float32 -> query (B, d).

    ``rows`` are the last L history item rows, oldest first and right-aligned, zero at pads;
    ``mask`` is 1 at items, 0 at pads (`sequence_inputs_torch`)."""

    kind = schema.TOWER_SEQUENCE

    def __init__(self, dim: int, *, length: int, blocks: int = 2, hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.dim, self.length, self.blocks = dim, length, blocks
        self.hidden = hidden if hidden is not None else 2 * dim
        self.dropout = dropout
        self.positions = nn.Parameter(torch.randn(length, dim) * INIT_STD)
        self.layers = nn.ModuleList(_Block(dim, self.hidden, dropout) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.drop = nn.Dropout(dropout)

    def constructor_args(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "length": self.length, "blocks": self.blocks,
                "hidden": self.hidden, "dropout": self.dropout}

    def encode(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SeqEncoder: (B, d), zero where the last position is a pad (an empty history)."""
        x = self.drop((rows + self.positions) * mask.unsqueeze(-1))
        key_penalty = ((mask - 1.0) * MASK_PENALTY).unsqueeze(1)
        for n, layer in enumerate(self.layers):
            x = layer(x, key_penalty, last_only=n == self.blocks - 1)
        return self.out_norm(x[:, -1]) * mask[:, -1:]

    def forward(self, user_emb: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        return user_emb + self.encode(rows, mask)


def sequence_inputs_torch(item_rows: torch.Tensor, history: torch.Tensor, length: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H) int64 item rows, -1 padded on the left, most recent last -> (rows (B, L, d),
    mask (B, L)) as model_repository.sequence_tower.sequence_inputs lays them out (the last
    ``length`` entries; a shorter history is padded on the left). Histories must be compact:
    every -1 before every item, as training and the versions' user_history write them."""
    if history.shape[1] >= length:
        history = history[:, history.shape[1] - length:]
    else:
        history = nn.functional.pad(history, (length - history.shape[1], 0), value=-1)
    valid = history >= 0
    # F.embedding, not item_rows[...]: its backward is ~10x faster on CPU than index_put
    rows = nn.functional.embedding(history.clamp(min=0), item_rows) * valid.unsqueeze(-1)
    return rows, valid.to(item_rows.dtype)


def numpy_sequence_tower(tower: SequenceTower) -> NumpySequenceTower:
    """The same tower as numpy tables: what retrieve serves from and the updater trains through."""
    def stack(get) -> torch.Tensor:
        return torch.stack([get(layer) for layer in tower.layers])

    def norm(module: nn.LayerNorm) -> torch.Tensor:
        return torch.stack([module.weight, module.bias])

    tables = {
        schema.SEQ_POSITIONS: tower.positions,
        schema.SEQ_ATTN_NORM: stack(lambda m: norm(m.attn_norm)),
        schema.SEQ_ATTN_IN: stack(lambda m: m.attn_in.weight),
        schema.SEQ_ATTN_IN_BIAS: stack(lambda m: m.attn_in.bias),
        schema.SEQ_ATTN_OUT: stack(lambda m: m.attn_out.weight),
        schema.SEQ_ATTN_OUT_BIAS: stack(lambda m: m.attn_out.bias),
        schema.SEQ_FFN_NORM: stack(lambda m: norm(m.ffn_norm)),
        schema.SEQ_FFN_W1: stack(lambda m: m.ffn_in.weight),
        schema.SEQ_FFN_B1: stack(lambda m: m.ffn_in.bias),
        schema.SEQ_FFN_W2: stack(lambda m: m.ffn_out.weight),
        schema.SEQ_FFN_B2: stack(lambda m: m.ffn_out.bias),
        schema.SEQ_OUT_NORM: norm(tower.out_norm),
    }
    return NumpySequenceTower({name: t.detach().cpu().numpy() for name, t in tables.items()})
