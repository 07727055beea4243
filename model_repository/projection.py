"""Text -> item space: the linear projection a retrieve version carries, and rows from it.

``item_row ~= text_emb @ weight + bias``, weight (TEXT_DIM, d), bias (d,), stored as the retrieve
tables `text_projection` and `text_projection_bias` (model_repository.retrieve_schema). The build
fits it (exporter.text_projection) and gives cold items their rows with `rows_from_text`'s rule;
serving projects query texts with it; the updater projects the titles of items added while
serving. Numpy only: retrieve imports this on every reload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_repository import retrieve_schema as schema


@dataclass(frozen=True)
class TextProjection:
    """weight (TEXT_DIM, d) and bias (d,), float32: ``item_row ~= text_emb @ weight + bias``."""

    weight: np.ndarray
    bias: np.ndarray

    def __call__(self, text_emb: np.ndarray) -> np.ndarray:
        """(N, TEXT_DIM) -> (N, d) float32."""
        return (np.asarray(text_emb, np.float32) @ self.weight + self.bias).astype(np.float32)

    @classmethod
    def from_tables(cls, tables) -> TextProjection | None:
        """The projection a version's tables hold; None for a version built without text."""
        if not all(name in tables for name in schema.TEXT_TABLES):
            return None
        return cls(np.asarray(tables[schema.TEXT_PROJECTION], np.float32),
                   np.asarray(tables[schema.TEXT_PROJECTION_BIAS], np.float32))

    def tables(self) -> dict[str, np.ndarray]:
        return {schema.TEXT_PROJECTION: np.asarray(self.weight, np.float32),
                schema.TEXT_PROJECTION_BIAS: np.asarray(self.bias, np.float32)}


def mean_norm(rows: np.ndarray) -> float:
    """The mean L2 norm of (N, d) rows (0.0 for none)."""
    return float(np.linalg.norm(rows, axis=1).mean()) if len(rows) else 0.0


def scale_rows(rows: np.ndarray, norm: float) -> np.ndarray:
    """(N, d) float32 rows rescaled to L2 norm ``norm`` each; zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows * (norm / np.where(norms > 0, norms, 1.0))).astype(np.float32)


def rows_from_text(projection: TextProjection, text_emb: np.ndarray, item_rows: np.ndarray,
                   item_popularity: np.ndarray) -> np.ndarray:
    """Item rows for new items from their text embeddings (N, TEXT_DIM): projected, and rescaled
    to the mean norm of the catalogue's rows that have events (all rows if none has), as build
    does for cold items."""
    warm = np.asarray(item_popularity) > 0
    return scale_rows(projection(text_emb), mean_norm(item_rows[warm] if warm.any() else item_rows))
