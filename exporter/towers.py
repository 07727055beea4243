"""The two user towers behind one interface: queries, save and load, numpy copies.

    "pooled"    query = UserTower(u, pool(history)) = u + h + MLP([u, h])
    "sequence"  query = u + SeqEncoder(last history_len item rows)     (exporter.sequence_tower)

Histories are read exactly as serving reads them (:mod:`model_repository.pooling`,
:mod:`model_repository.sequence_tower`); `numpy_tower` gives the weights retrieve serves from and
the updater trains through; `save_tower` / `load_tower` the file a user_tower version holds.
exporter.train makes and trains them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exporter.sequence_tower import SequenceTower, numpy_sequence_tower, sequence_inputs_torch
from model_repository import retrieve_schema as schema
from model_repository.sequence_tower import NumpySequenceTower
from model_repository.tower import TOWER_FILE_FORMAT, NumpyTower, read_tower_file


class UserTower(nn.Module):
    """query = user_emb + history_emb + MLP([user_emb, history_emb]).

    Inputs and output are (B, dim) float32. The residual makes an untrained tower a plain
    two-tower dot product; the MLP learns how much to trust the row vs the recent history (it has
    to cope with a zero row: new users, and ``user_dropout`` in training).
    """

    kind = schema.TOWER_POOLED

    def __init__(self, dim: int, *, hidden: int | None = None):
        super().__init__()
        self.dim = dim
        self.hidden = hidden if hidden is not None else 2 * dim
        self.mix = nn.Sequential(
            nn.Linear(2 * dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, dim))

    def constructor_args(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "hidden": self.hidden}

    def forward(self, user_emb: torch.Tensor, history_emb: torch.Tensor) -> torch.Tensor:
        return user_emb + history_emb + self.mix(torch.cat([user_emb, history_emb], dim=1))


Tower = UserTower | SequenceTower
TOWER_CLASSES = {UserTower.kind: UserTower, SequenceTower.kind: SequenceTower}


def tower_query(tower: Tower, user_emb: torch.Tensor, item_rows: torch.Tensor,
                history: torch.Tensor, *, decay: float) -> torch.Tensor:
    """(B, d) queries from user rows (B, d), the item table (I, d) and histories (B, H) int64
    item rows (-1 padded on the left, most recent last), through either kind of tower."""
    if isinstance(tower, SequenceTower):
        rows, mask = sequence_inputs_torch(item_rows, history, tower.length)
        return tower(user_emb, rows, mask)
    return tower(user_emb, pool_history_torch(item_rows, history, decay))


def save_tower(tower: Tower, path: str | Path) -> Path:
    """Write the tower's state dict and constructor arguments to one file (torch.save)."""
    path = Path(path)
    torch.save({"format": TOWER_FILE_FORMAT, "args": tower.constructor_args(),
                "state_dict": tower.state_dict()}, path)
    return path


def numpy_tower(tower: Tower) -> NumpyTower | NumpySequenceTower:
    """The same tower as numpy weights: what retrieve serves from and the updater trains through."""
    if isinstance(tower, SequenceTower):
        return numpy_sequence_tower(tower)
    first, _, second = tower.mix
    weights = (first.weight, first.bias, second.weight, second.bias)
    return NumpyTower(*(w.detach().cpu().numpy() for w in weights))


def load_tower(path: str | Path) -> Tower:
    """Rebuild a tower written by :func:`save_tower`, in eval mode (a file without a kind, from
    before the sequence tower, holds a pooled one)."""
    blob = read_tower_file(path)
    args = dict(blob["args"])
    kind = args.pop("kind", schema.TOWER_POOLED)
    if kind not in TOWER_CLASSES:
        raise ValueError(f"{path}: unknown tower kind {kind!r}")
    dim = args.pop("dim")
    tower = TOWER_CLASSES[kind](dim, **args)
    tower.load_state_dict(blob["state_dict"])
    return tower.eval()


def pool_history_torch(item_rows: torch.Tensor, history: torch.Tensor, decay: float
                       ) -> torch.Tensor:
    """Recency-weighted mean of item rows, the torch twin of ``model_repository.pooling``.

    item_rows: (I, d) float; history: (B, H) int64 item rows, -1 for missing entries (normally
    on the left), most recent last. The j-th valid entry from the end gets weight ``decay**j``;
    weights are normalised per row; a row with no valid entry pools to zeros. Returns (B, d).
    """
    valid = history >= 0
    # age = number of valid entries after this one, so -1s anywhere count as absent, exactly
    # like padded_to_csr + recency_weights
    after = valid.flip(1).cumsum(1).flip(1) - valid.long()
    weights = torch.where(valid, torch.pow(torch.tensor(decay, dtype=item_rows.dtype),
                                           after.to(item_rows.dtype)), 0.0)
    total = weights.sum(1, keepdim=True)
    weights = weights / torch.where(total > 0, total, 1.0)
    # F.embedding, not item_rows[...]: its backward is ~10x faster on CPU than index_put
    rows = nn.functional.embedding(history.clamp(min=0), item_rows)  # pads carry weight 0
    return (weights.unsqueeze(-1) * rows).sum(1)
