"""The pooled user tower in numpy, from a retrieve version's own tables; and which tower a
version serves with (`tower_from_tables`).

    query = u + h + W2 relu(W1 [u, h] + b1) + b2        (exporter.towers.UserTower)

h is the recency-weighted pool of the user's history (model_repository.pooling). A version's
meta names its tower's kind (retrieve_schema.RetrieveMeta.tower): this one, "pooled", or the
sequence tower (model_repository.sequence_tower), which reads the history rows themselves.

The build writes the tower's four weights into every retrieve version as the tables named in
`retrieve_schema.TOWER_TABLES`, and the updater carries them unchanged (it trains rows, never the tower), so a
version always serves with the tower it was trained against. `retrieve` runs it here, in its own
process: a BLS call to the `user_tower` model cost more than the MLP (about 0.2 ms of a 0.9 ms
request at one user on the 2-core development machine), while the MLP on a batch of 32 users at
d=64 takes a few microseconds. `user_tower` (ONNX, TensorRT on GPU hosts) stays the parity
reference, and retrieve falls back to it for versions written before the tables existed.
The user_tower version also keeps the torch state dict (`TOWER_FILE`); `NumpyTower.from_file` reads
it for such older versions, the only place that needs torch.

Imports stay light (numpy only): the stub imports this on every reload.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_repository import retrieve_schema as schema
from model_repository.retrieve_schema import TOWER_TABLES
from model_repository.sequence_tower import NumpySequenceTower

TOWER_FILE = "tower.pt"  # in each user_tower version: {"format", "args", "state_dict"} (torch.save)
TOWER_FILE_FORMAT = 1
# state-dict keys of exporter.towers.UserTower's two Linear layers, in NumpyTower's argument order
_STATE_KEYS = ("mix.0.weight", "mix.0.bias", "mix.2.weight", "mix.2.bias")


def read_tower_file(path: str | Path) -> dict:
    """A TOWER_FILE's contents ({"format", "args", "state_dict"}), its format checked. Imports
    torch, so only callers that need the file pay for it."""
    import torch

    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if blob.get("format") != TOWER_FILE_FORMAT:
        raise ValueError(f"{path}: tower file format {blob.get('format')!r}, "
                         f"expected {TOWER_FILE_FORMAT}")
    return blob


class TowerShapeError(ValueError):
    """Tower tables whose shapes do not fit together."""


class NumpyTower:
    """(user_emb, history_emb), each (B, d) float32 -> query (B, d) float32."""

    kind = schema.TOWER_POOLED

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray):
        """w1 (hidden, 2d), b1 (hidden,), w2 (d, hidden), b2 (d,): torch's Linear layout."""
        w1, b1, w2, b2 = (np.asarray(a, dtype=np.float32) for a in (w1, b1, w2, b2))
        if w2.ndim != 2 or w1.shape != (w2.shape[1], 2 * w2.shape[0]) \
                or b1.shape != (w2.shape[1],) or b2.shape != (w2.shape[0],):
            raise TowerShapeError(
                f"tower tables do not fit together: w1 {w1.shape}, b1 {b1.shape}, w2 {w2.shape}, "
                f"b2 {b2.shape}; expected (hidden, 2d), (hidden,), (d, hidden), (d,)")
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.dim, self.hidden = w2.shape
        # split and transposed once, so a batch is two sgemms in, one out, with no concatenate
        self._w1_user = np.ascontiguousarray(w1[:, : self.dim].T)
        self._w1_history = np.ascontiguousarray(w1[:, self.dim :].T)
        self._w2 = np.ascontiguousarray(w2.T)

    @classmethod
    def from_tables(cls, tables) -> NumpyTower | None:
        """The tower held in a version's tables; None if the version has no tower tables."""
        if not all(name in tables for name in TOWER_TABLES):
            return None
        return cls(*(tables[name] for name in TOWER_TABLES))

    @classmethod
    def from_file(cls, path: str | Path) -> NumpyTower:
        """The tower in a user_tower version's TOWER_FILE (written by exporter.towers.save_tower).
        Imports torch: only for versions without tower tables, never on the serving path."""
        state = read_tower_file(path)["state_dict"]
        return cls(*(state[key].detach().cpu().numpy() for key in _STATE_KEYS))

    def tables(self) -> dict[str, np.ndarray]:
        return dict(zip(TOWER_TABLES, (self.w1, self.b1, self.w2, self.b2)))

    def __call__(self, user_emb: np.ndarray, history_emb: np.ndarray) -> np.ndarray:
        user = np.asarray(user_emb, dtype=np.float32)
        history = np.asarray(history_emb, dtype=np.float32)
        hidden = user @ self._w1_user
        hidden += history @ self._w1_history
        hidden += self.b1
        np.maximum(hidden, 0.0, out=hidden)
        query = hidden @ self._w2
        query += user
        query += history
        query += self.b2
        return query


def tower_from_tables(tables, kind: str) -> NumpyTower | NumpySequenceTower | None:
    """The tower a retrieve version's tables hold, of the ``kind`` its meta names. None for a
    pooled version written before versions carried tower tables (the user_tower model has it);
    a sequence version always carries its tables, and one that lacks them is a SchemaError."""
    if kind == schema.TOWER_SEQUENCE:
        tower = NumpySequenceTower.from_tables(tables)
        if tower is None:
            raise schema.SchemaError("a sequence-tower version without its tables "
                                     f"({schema.SEQ_POSITIONS}, ...)")
        return tower
    return NumpyTower.from_tables(tables)
