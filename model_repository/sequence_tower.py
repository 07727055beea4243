"""The sequence user tower in numpy, from a retrieve version's own tables.

    query = u + SeqEncoder(the user's last L history item rows)     (exporter.sequence_tower)

SeqEncoder is a small SASRec-style transformer (Kang & McAuley 2018) over the history, oldest
first and right-aligned, so position L-1 always holds the most recent item:

    x_j   = m_j * (item_rows[h_j] + P_j)                       m_j = 1 for an item, 0 for a pad
    block (pre-LayerNorm, single-head attention, n blocks):
        a   = LN(x)                                            q, k, v = a W_in^T + b_in
        x_i = x_i + softmax_j(q_i . k_j / sqrt(d) + (m_j - 1) * MASK_PENALTY) v_j W_out^T + b_out
        x_i = x_i + W2 relu(W1 LN(x_i) + b1) + b2
    SeqEncoder = m_{L-1} * LN(x_{L-1})                         zero for an empty history

Attention is plain (each position sees the whole window), not causal: the model is trained on
one (history, next item) example per event, so every position of the window is in the target's
past and nothing leaks; causality only matters when all positions are trained at once as in
SASRec. Only the last position is read, so the last block computes its query, attention and FFN
for that position alone (the keys and values still come from every position).

Tables (retrieve_schema.SEQUENCE_TABLES), float32, torch's Linear layout (out, in):

    seq_positions      (L, d)             seq_ffn_norm   (n, 2, d)  LayerNorm weight, bias
    seq_attn_norm      (n, 2, d)          seq_ffn_w1     (n, h, d)
    seq_attn_in        (n, 3d, d) q;k;v   seq_ffn_b1     (n, h)
    seq_attn_in_bias   (n, 3d)            seq_ffn_w2     (n, d, h)
    seq_attn_out       (n, d, d)          seq_ffn_b2     (n, d)
    seq_attn_out_bias  (n, d)             seq_out_norm   (2, d)

The updater trains rows through this tower frozen: with the history held constant,
d(query)/d(u) is the identity, so the user row's gradient is the query's.

Imports stay light (numpy only): the stub imports this on every reload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from model_repository import retrieve_schema as schema

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the torch twin uses
# added to the attention logit of a pad key: exp(-1e9) is 0 in float32, and unlike -inf it keeps
# an all-pad row (an empty history, whose output is zeroed anyway) finite in torch, ONNX and here
MASK_PENALTY = 1e9


class SequenceTowerShapeError(ValueError):
    """Sequence tower tables whose shapes do not fit together; the message names the table."""


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis, as torch computes it (biased variance, eps inside)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def sequence_inputs(item_rows: np.ndarray, histories: Sequence[np.ndarray], length: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Histories (lists of item rows, oldest first) -> the encoder's inputs.

    Keeps each history's last ``length`` items, right-aligned: (rows (B, L, d) float32, zero
    at pads; mask (B, L) float32, 1 at items). The same layout the ONNX tower takes as
    HISTORY_SEQ and HISTORY_MASK."""
    kept = [np.asarray(h, dtype=np.int64)[-length:] for h in histories]
    lengths = np.array([k.size for k in kept], dtype=np.int64)
    index = np.full((len(kept), length), -1, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        owner = np.repeat(np.arange(len(kept)), lengths)
        column = length - np.repeat(lengths, lengths) + (np.arange(total) - starts)
        index[owner, column] = np.concatenate(kept)
    mask = index >= 0
    rows = np.asarray(item_rows, dtype=np.float32)[np.maximum(index, 0)]
    rows *= mask[..., None]
    return rows, mask.astype(np.float32)


class NumpySequenceTower:
    """(user_emb (B, d), rows (B, L, d), mask (B, L)) float32 -> query (B, d) float32."""

    kind = schema.TOWER_SEQUENCE

    def __init__(self, tables: Mapping[str, np.ndarray]):
        missing = [name for name in schema.SEQUENCE_TABLES if name not in tables]
        if missing:
            raise SequenceTowerShapeError(f"sequence tower table {missing[0]} is missing")
        t = {name: np.asarray(tables[name], dtype=np.float32) for name in schema.SEQUENCE_TABLES}
        self._tables = t
        self.length, self.dim = t[schema.SEQ_POSITIONS].shape
        self.blocks, self.hidden = t[schema.SEQ_FFN_W1].shape[:2]
        n, d, h = self.blocks, self.dim, self.hidden
        want = {
            schema.SEQ_ATTN_NORM: (n, 2, d), schema.SEQ_ATTN_IN: (n, 3 * d, d),
            schema.SEQ_ATTN_IN_BIAS: (n, 3 * d), schema.SEQ_ATTN_OUT: (n, d, d),
            schema.SEQ_ATTN_OUT_BIAS: (n, d), schema.SEQ_FFN_NORM: (n, 2, d),
            schema.SEQ_FFN_W1: (n, h, d), schema.SEQ_FFN_B1: (n, h), schema.SEQ_FFN_W2: (n, d, h),
            schema.SEQ_FFN_B2: (n, d), schema.SEQ_OUT_NORM: (2, d),
        }
        for name, shape in want.items():
            if t[name].shape != shape:
                raise SequenceTowerShapeError(
                    f"sequence tower table {name} is {t[name].shape}, expected {shape} for "
                    f"L={self.length}, d={d}, {n} blocks, FFN width {h}")
        if n < 1 or self.length < 1:
            raise SequenceTowerShapeError(f"sequence tower with {n} blocks over L={self.length}")
        # transposed once, so each projection is one sgemm on (rows, d)
        self._w_in = np.ascontiguousarray(t[schema.SEQ_ATTN_IN].transpose(0, 2, 1))
        self._w_out = np.ascontiguousarray(t[schema.SEQ_ATTN_OUT].transpose(0, 2, 1))
        self._w1 = np.ascontiguousarray(t[schema.SEQ_FFN_W1].transpose(0, 2, 1))
        self._w2 = np.ascontiguousarray(t[schema.SEQ_FFN_W2].transpose(0, 2, 1))

    @classmethod
    def from_tables(cls, tables: Mapping[str, np.ndarray]) -> NumpySequenceTower | None:
        """The sequence tower held in a version's tables; None if it holds none of them."""
        if not any(name in tables for name in schema.SEQUENCE_TABLES):
            return None
        return cls(tables)

    def tables(self) -> dict[str, np.ndarray]:
        return dict(self._tables)

    def history_inputs(self, item_rows: np.ndarray, histories: Sequence[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """`sequence_inputs` over this tower's window length."""
        return sequence_inputs(item_rows, histories, self.length)

    def encode(self, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """SeqEncoder: rows (B, L, d), mask (B, L) -> (B, d) float32, zero where mask[:, -1]
        is 0 (an empty history)."""
        t = self._tables
        mask = np.asarray(mask, dtype=np.float32)
        x = (np.asarray(rows, dtype=np.float32) + t[schema.SEQ_POSITIONS]) * mask[..., None]
        key_penalty = ((mask - 1.0) * MASK_PENALTY)[:, None, :]  # (B, 1, L)
        d, scale = self.dim, np.float32(1.0 / np.sqrt(self.dim))
        for b in range(self.blocks):
            norm = t[schema.SEQ_ATTN_NORM][b]
            a = layer_norm(x, norm[0], norm[1])
            kv = a @ self._w_in[b][:, d:] + t[schema.SEQ_ATTN_IN_BIAS][b][d:]
            if b == self.blocks - 1:  # only the last position is read
                x, a = x[:, -1:], a[:, -1:]
            q = a @ self._w_in[b][:, :d] + t[schema.SEQ_ATTN_IN_BIAS][b][:d]
            logits = q @ kv[..., :d].transpose(0, 2, 1) * scale + key_penalty
            logits -= logits.max(axis=-1, keepdims=True)
            weights = np.exp(logits)
            weights /= weights.sum(axis=-1, keepdims=True)
            x = x + (weights @ kv[..., d:]) @ self._w_out[b] + t[schema.SEQ_ATTN_OUT_BIAS][b]
            norm = t[schema.SEQ_FFN_NORM][b]
            hidden = layer_norm(x, norm[0], norm[1]) @ self._w1[b] + t[schema.SEQ_FFN_B1][b]
            np.maximum(hidden, 0.0, out=hidden)
            x = x + hidden @ self._w2[b] + t[schema.SEQ_FFN_B2][b]
        out_norm = t[schema.SEQ_OUT_NORM]
        out = layer_norm(x[:, -1], out_norm[0], out_norm[1]) * mask[:, -1:]
        return out.astype(np.float32, copy=False)

    def __call__(self, user_emb: np.ndarray, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(user_emb, dtype=np.float32) + self.encode(rows, mask)
