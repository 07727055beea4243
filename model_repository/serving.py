"""What `retrieve` does per batch, importable and testable without a server.

Request -> rows: external user and item ids are mapped to table rows through the version's id
maps; HISTORY ids that are not in the catalogue are ignored (documented in the README); an
unknown user gets a zero user row and is served from the request's HISTORY, or from popularity
when there is none. Rows -> query: the history is pooled with recency weights (kernels.gather_pool)
and the user tower turns (user row, pooled history) into a query. Query -> answer: one fused
score + top-K pass over the item table (kernels.score_topk) with per-request exclusions.

Imports stay light (numpy and kernels' numpy path only): the stub imports this on every reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kernels
from model_repository import contract as c
from model_repository import versions
from model_repository.pooling import DEFAULT_RECENCY_DECAY, recency_weights

TowerFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RequestError(ValueError):
    """A request the caller got wrong; the message names the field."""


@dataclass(frozen=True)
class Query:
    """One request, decoded. Arrays are 1-D; None where the optional input was not sent."""

    user_id: int
    k: int = c.DEFAULT_K
    history: np.ndarray | None = None
    exclude: np.ndarray | None = None
    exclude_seen: bool = False


@dataclass(frozen=True)
class Answer:
    item_ids: np.ndarray  # (k,) int64, best first
    scores: np.ndarray  # (k,) float32
    version: int


def _one_value(inputs: dict, name: str, default, cast):
    value = inputs.get(name)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {flat.size}")
    return cast(flat[0])


def _id_list(inputs: dict, name: str) -> np.ndarray | None:
    value = inputs.get(name)
    if value is None:
        return None
    return np.asarray(value, dtype=np.int64).reshape(-1)


def decode_query(inputs: dict) -> Query:
    """Inputs by tensor name (numpy arrays, batch dim included) -> Query. Raises RequestError."""
    if inputs.get(c.USER_ID) is None:
        raise RequestError(f"{c.USER_ID} is required")
    return Query(
        user_id=_one_value(inputs, c.USER_ID, None, int),
        k=_one_value(inputs, c.K, c.DEFAULT_K, int),
        history=_id_list(inputs, c.HISTORY),
        exclude=_id_list(inputs, c.EXCLUDE),
        exclude_seen=_one_value(inputs, c.EXCLUDE_SEEN, False, bool),
    )


class IdMap:
    """External ids <-> table rows through a sorted copy of the ids."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.int64)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]

    def __len__(self) -> int:
        return self.ids.size

    def rows(self, external: np.ndarray) -> np.ndarray:
        """Rows of the given ids, -1 for ids not in the map."""
        external = np.asarray(external, dtype=np.int64).reshape(-1)
        if self._sorted.size == 0:
            return np.full(external.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._sorted, external)
        pos = np.minimum(pos, self._sorted.size - 1)
        found = self._sorted[pos] == external
        return np.where(found, self._order[pos], -1).astype(np.int64)


class Retriever:
    """A loaded retrieve version answering batches of queries."""

    def __init__(self, version_dir: Path, tower: TowerFn):
        self.version_dir = Path(version_dir)
        self.manifest, tables = versions.load_tables(self.version_dir)
        self.version = self.manifest.version
        self.users = IdMap(tables["user_ids"])
        self.items = IdMap(tables["item_ids"])
        self.user_rows = tables["user_rows"]
        self.item_rows = tables["item_rows"]
        self.user_history = tables["user_history"]
        popularity = np.asarray(tables["item_popularity"], dtype=np.float32)
        # popularity ranking, computed once: most popular first, lower row first on ties
        self.popular_rows = np.lexsort((np.arange(popularity.size), -popularity))
        self.popularity = popularity
        self.decay = float(self.manifest.meta.get("recency_decay", DEFAULT_RECENCY_DECAY))
        self.tower = tower

    @property
    def n_items(self) -> int:
        return len(self.items)

    def check(self, query: Query) -> None:
        if query.k < 1:
            raise RequestError(f"{c.K} must be >= 1, got {query.k}")
        if query.k > self.n_items:
            raise RequestError(f"{c.K}={query.k} exceeds the catalogue size {self.n_items}")

    def _history_rows(self, query: Query, user_row: int) -> np.ndarray:
        if query.history is not None and query.history.size:
            rows = self.items.rows(query.history)
            return rows[rows >= 0]  # unknown history ids are ignored
        if user_row >= 0:
            stored = np.asarray(self.user_history[user_row])
            return stored[stored >= 0]
        return np.zeros(0, dtype=np.int64)

    def answer(self, queries: list[Query]) -> list[Answer]:
        """Answer a batch. Every query must have passed `check`."""
        if not queries:
            return []
        user_rows = self.users.rows(np.array([q.user_id for q in queries], dtype=np.int64))
        histories = [self._history_rows(q, int(r)) for q, r in zip(queries, user_rows)]
        excludes = []
        for q, h in zip(queries, histories):
            parts = [h] if q.exclude_seen else []
            if q.exclude is not None and q.exclude.size:
                rows = self.items.rows(q.exclude)
                parts.append(rows[rows >= 0])
            excludes.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64))

        answers: list[Answer | None] = [None] * len(queries)
        # an unknown user with no usable history has nothing to personalise from
        personal = [i for i, (r, h) in enumerate(zip(user_rows, histories)) if r >= 0 or h.size]
        for i in set(range(len(queries))) - set(personal):
            answers[i] = self._popular(queries[i].k, excludes[i])
        if personal:
            for i, answer in zip(personal, self._personal(queries, user_rows, histories,
                                                           excludes, personal)):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _personal(self, queries, user_rows, histories, excludes, picked) -> list[Answer]:
        dim = self.item_rows.shape[1]
        rows = user_rows[picked]
        user_emb = np.zeros((len(picked), dim), dtype=np.float32)
        known = rows >= 0
        user_emb[known] = self.user_rows[rows[known]]
        lists = [histories[i] for i in picked]
        offsets = np.zeros(len(picked) + 1, dtype=np.int64)
        np.cumsum([h.size for h in lists], out=offsets[1:])
        ids = np.concatenate(lists).astype(np.int64) if offsets[-1] else np.zeros(0, np.int64)
        weights = recency_weights(offsets, decay=self.decay)
        pooled = kernels.gather_pool(self.item_rows, ids, offsets, weights=weights, mode="sum")
        query_vecs = np.asarray(self.tower(user_emb, np.asarray(pooled, np.float32)), np.float32)

        ex_lists = [excludes[i] for i in picked]
        ex_offsets = np.zeros(len(picked) + 1, dtype=np.int64)
        np.cumsum([e.size for e in ex_lists], out=ex_offsets[1:])
        ex_ids = np.concatenate(ex_lists).astype(np.int64) if ex_offsets[-1] else np.zeros(0, np.int64)
        k_max = max(queries[i].k for i in picked)
        scores, item_rows = kernels.score_topk(
            query_vecs, self.item_rows, k_max, exclude=(ex_offsets, ex_ids)
        )
        out = []
        for row, i in enumerate(picked):
            k = queries[i].k
            out.append(self._to_answer(item_rows[row, :k], scores[row, :k]))
        return out

    def _popular(self, k: int, exclude_rows: np.ndarray) -> Answer:
        ranked = self.popular_rows
        if exclude_rows.size:
            ranked = ranked[~np.isin(ranked, exclude_rows)]
        top = ranked[:k]
        return self._to_answer(top, self.popularity[top])

    def _to_answer(self, item_rows: np.ndarray, scores: np.ndarray) -> Answer:
        item_rows = np.asarray(item_rows, dtype=np.int64)
        valid = item_rows >= 0  # fewer than k servable items: the tail is dropped
        return Answer(
            item_ids=self.items.ids[item_rows[valid]],
            scores=np.asarray(scores, dtype=np.float32)[valid],
            version=self.version,
        )

