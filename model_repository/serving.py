"""What `retrieve` does per batch, importable and testable without a server.

Request -> rows: external user and item ids are mapped to table rows through the version's id
maps; HISTORY ids that are not in the catalogue are ignored (documented in docs/wire.md); an
unknown user gets a zero user row and is served from the request's HISTORY, or from popularity
when there is none. Rows -> query, with the tower the version carries (its meta's ``tower``): a
pooled tower turns (user row, the history pooled with recency weights by kernels.gather_pool)
into a query, in numpy from the version's own tower tables (model_repository.tower), or through
the `TowerFn` given for a version written before those tables existed; a sequence tower reads
the history's last L item rows themselves (model_repository.sequence_tower), always from its
tables. Query -> answer: one fused score + top-K pass over the item table (the
popularity prior, when the version has one, as one more column: model_repository.scoring;
with a session gate each query weighs it by its history's age, measured on the log's clock)
(kernels.score_topk) with per-request exclusions. Id look-ups run once per batch, not per query.

Text (QUERY_TEXT): the text's embedding (the `text_encoder` model, through the `TextFn` given)
is projected into the item space with the version's `text_projection` tables; with a user (a
row or a usable history) it is blended into the user's query (see `blend_text`), otherwise the
projected text is the query: pure text search over the catalogue, ranked without the popularity
prior. Without QUERY_TEXT nothing changes.

Imports stay light (numpy and kernels' numpy path only): the stub imports this on every reload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

import kernels
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.live_history import NOTHING, LiveHistoryReader
from model_repository.pooling import recency_weights
from model_repository.projection import TextProjection
from model_repository.scoring import (
    history_ages,
    history_clock,
    popularity_prior,
    queries_with_prior,
    rows_with_prior,
    session_weights,
)
from model_repository.sequence_tower import NumpySequenceTower
from model_repository.tower import tower_from_tables

log = logging.getLogger(__name__)

TowerFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# decoded texts -> (B, TEXT_DIM) float32 embeddings; raises RequestError for a text it refuses
TextFn = Callable[[list[str]], np.ndarray]


class RequestError(ValueError):
    """A request the caller got wrong; the message names the field."""


@dataclass(frozen=True)
class Query:
    """One request, decoded. Arrays are 1-D; None where the optional input was not sent."""

    user_id: int | None
    k: int = c.DEFAULT_K
    history: np.ndarray | None = None
    exclude: np.ndarray | None = None
    exclude_seen: bool = False
    text: str | None = None  # QUERY_TEXT, decoded and checked; None when not sent


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


def decode_text(raw, field: str, *, max_chars: int = c.MAX_TEXT_CHARS) -> str:
    """One BYTES element -> str. Raises RequestError naming ``field`` for bytes that are not
    UTF-8, an empty or all-whitespace text, or more than ``max_chars`` characters."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except (UnicodeDecodeError, TypeError):
            raise RequestError(f"{field} must be UTF-8 text") from None
    if not text.strip():
        raise RequestError(f"{field} is empty")
    if len(text) > max_chars:
        raise RequestError(f"{field} is too long: {len(text)} characters, the limit is "
                           f"{max_chars}")
    return text


def decode_query(inputs: dict) -> Query:
    """Inputs by tensor name (numpy arrays, batch dim included) -> Query. Raises RequestError.

    USER_ID is required unless QUERY_TEXT is given (then a missing user means text search)."""
    text = _one_value(inputs, c.QUERY_TEXT, None, lambda raw: decode_text(raw, c.QUERY_TEXT))
    if inputs.get(c.USER_ID) is None and text is None:
        raise RequestError(f"{c.USER_ID} is required (unless {c.QUERY_TEXT} is given)")
    return Query(
        user_id=_one_value(inputs, c.USER_ID, None, int),
        k=_one_value(inputs, c.K, c.DEFAULT_K, int),
        history=_id_list(inputs, c.HISTORY),
        exclude=_id_list(inputs, c.EXCLUDE),
        exclude_seen=_one_value(inputs, c.EXCLUDE_SEEN, False, bool),
        text=text,
    )


def blend_text(user_query: np.ndarray, projected_text: np.ndarray, *,
               weight: float = c.DEFAULT_TEXT_WEIGHT) -> np.ndarray:
    """user_query + weight * ||user_query|| * projected_text / ||projected_text||, row-wise.

    Both (B, d) float32. Scaling the text to the user query's norm makes ``weight`` mean the
    same for every user: 1.0 lets text and user pull equally, 0 ignores the text.
    """
    user_norm = np.linalg.norm(user_query, axis=1, keepdims=True)
    text_norm = np.linalg.norm(projected_text, axis=1, keepdims=True)
    unit = projected_text / np.where(text_norm > 0, text_norm, 1.0)
    return (user_query + weight * user_norm * unit).astype(np.float32)


def embed_texts(queries: list[Query], encode: TextFn) -> list[np.ndarray | RequestError | None]:
    """The text embedding (TEXT_DIM,) of each query with text, None for the others.

    All texts go to ``encode`` in one call; if it refuses the batch, each text is encoded alone,
    so one bad text fails only its own request (its slot holds the RequestError)."""
    picked = [i for i, q in enumerate(queries) if q.text is not None]
    out: list[np.ndarray | RequestError | None] = [None] * len(queries)
    if not picked:
        return out
    try:
        emb = encode([queries[i].text for i in picked])
        for row, i in enumerate(picked):
            out[i] = emb[row]
        return out
    except RequestError:
        pass
    for i in picked:
        try:
            out[i] = encode([queries[i].text])[0]
        except RequestError as exc:
            out[i] = exc
    return out


# what one request of a batch comes to: its answer, the RequestError refusing it (the field
# named), or the exception that broke the batch (logged by the model, answered as INTERNAL)
Outcome = Union["Answer", RequestError, Exception]


def answer_requests(retriever: Retriever, requests: list[dict], encode: TextFn) -> list[Outcome]:
    """What `retrieve` answers a batch, one outcome per request in request order.

    ``requests``: each request's inputs by tensor name (numpy arrays, batch dim included).
    A request that fails decoding, `Retriever.check` or its text's encoding gets its
    RequestError and the others go on; the valid ones are answered together in one
    `Retriever.answer`, and an unexpected failure there is every valid request's outcome."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    queries, slots = [], []
    for slot, inputs in enumerate(requests):
        try:
            query = decode_query(inputs)
            retriever.check(query)
        except RequestError as exc:
            outcomes[slot] = exc
            continue
        queries.append(query)
        slots.append(slot)
    try:
        text_emb = embed_texts(queries, encode)
        kept = [i for i, emb in enumerate(text_emb) if not isinstance(emb, RequestError)]
        for i in set(range(len(queries))) - set(kept):
            outcomes[slots[i]] = text_emb[i]
        answers = retriever.answer([queries[i] for i in kept], [text_emb[i] for i in kept])
        for i, answer in zip(kept, answers):
            outcomes[slots[i]] = answer
    except Exception as exc:  # noqa: BLE001 - every request must get an outcome
        for slot in slots:
            if outcomes[slot] is None:
                outcomes[slot] = exc
    return outcomes  # type: ignore[return-value]


_NO_USER = np.iinfo(np.int64).min  # stands for a missing USER_ID in id look-ups: never a row


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

    def __init__(self, version_dir: Path, tower: TowerFn | None = None, *,
                 live_history: LiveHistoryReader | None = None):
        """``tower``: (user_emb, history_emb) -> query, each (B, d) float32; used only when the
        version has no tower tables of its own. ``live_history``: each user's recent items as
        they happen (model_repository.live_history), ahead of the version's stored history."""
        self.version_dir = Path(version_dir)
        self.live_history = live_history
        # seconds by part ("live_read", "tower", "score_topk") added up while set (retrieve's
        # metrics set it to a dict per batch); None: not timed
        self.part_seconds: dict[str, float] | None = None
        self.manifest, tables = versions.load_tables(self.version_dir)
        self.meta = schema.RetrieveMeta.from_manifest(self.manifest)
        # plain ndarray views of the memory maps: every slice of an np.memmap runs Python-level
        # __array_finalize__; measured 50-110 us per batch of 1-32 requests (N=1e5, 2 cores)
        tables = {name: np.asarray(table) for name, table in tables.items()}
        schema.check_tables(tables, where=f"retrieve version {self.manifest.version}")
        self.version = self.manifest.version
        self.users = IdMap(tables[schema.USER_IDS])
        self.items = IdMap(tables[schema.ITEM_IDS])
        self.user_rows = tables[schema.USER_ROWS]
        self.item_rows = tables[schema.ITEM_ROWS]
        self.user_history = tables[schema.USER_HISTORY]
        # the trend counts when the version has a popularity half-life, else all-time counts
        popularity = schema.prior_counts(tables, self.meta)
        # popularity ranking, computed once: most popular first, lower row first on ties
        self.popular_rows = np.lexsort((np.arange(popularity.size), -popularity))
        self.popularity = popularity
        self.decay = self.meta.recency_decay
        # what queries are scored against: the item rows, with the popularity prior (at weight
        # 1; each query carries its weight) as one more column when the version has one
        # (model_repository.scoring; an (I, d+1) copy)
        self.score_rows = self.item_rows
        if self.meta.has_prior:
            self.score_rows = rows_with_prior(self.item_rows, popularity_prior(popularity, 1.0))
        # the session gate's inputs: each user's newest stored history event, and the newest of
        # all (the clock until the live history knows a later one)
        self.gated = self.meta.session_s > 0
        self.user_last_at = tables.get(schema.USER_LAST_AT)
        self.clock = history_clock(self.user_last_at)
        try:
            own_tower = tower_from_tables(tables, self.meta.tower)
        except schema.SchemaError as exc:
            raise schema.SchemaError(f"retrieve version {self.manifest.version}: {exc}") from None
        self.tower_from_tables = own_tower is not None
        self.tower: TowerFn | NumpySequenceTower | None = own_tower if own_tower is not None else tower
        if own_tower is None:
            log.warning("retrieve version %s has no tower tables: the user tower runs in the "
                        "user_tower model through BLS, which costs more per request; rebuild "
                        "with `freshrec build` to serve it from the version's own tables",
                        self.manifest.version)
        if self.tower is None:
            raise ValueError(f"{self.version_dir}: the version has no tower tables and no tower "
                             "was given")
        # text embedding -> item space; None in a version built without the text encoder,
        # which then refuses QUERY_TEXT
        self.text_projection = TextProjection.from_tables(tables)
        self.text_weight = self.meta.text_weight

    def warm_up(self) -> None:
        """Answer one query through the scoring path, so that the first real request does not
        pay for first-call set-up (kernels' onnxruntime session, page faults on the tables)."""
        if len(self.users) and self.n_items:
            self.answer([Query(user_id=int(self.users.ids[0]), k=1)])

    @property
    def has_text(self) -> bool:
        return self.text_projection is not None

    @property
    def n_items(self) -> int:
        return len(self.items)

    def check(self, query: Query) -> None:
        if query.k < 1:
            raise RequestError(f"{c.K} must be >= 1, got {query.k}")
        if query.k > self.n_items:
            raise RequestError(f"{c.K}={query.k} exceeds the catalogue size {self.n_items}")
        if query.text is not None and not self.has_text:
            raise RequestError(f"{c.QUERY_TEXT} is not supported: retrieve version {self.version} "
                               "was built without the text encoder")

    def _item_rows_per_query(self, lists: list[np.ndarray | None]) -> list[np.ndarray]:
        """External item ids per query -> the rows of those in the catalogue, one id look-up
        for the whole batch (unknown ids are dropped; None gives an empty list)."""
        sizes = [0 if ids is None else ids.size for ids in lists]
        if not sum(sizes):
            return [np.zeros(0, np.int64) for _ in lists]
        rows = self.items.rows(np.concatenate([ids for ids in lists if ids is not None]))
        return [part[part >= 0] for part in np.split(rows, np.cumsum(sizes)[:-1])]

    def _histories(self, queries: list[Query], user_rows: np.ndarray
                   ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Each query's history rows: its HISTORY if it sent one, else the user's live history,
        else the history the version stored for the user, else nothing (ids not in this
        version's catalogue are ignored). One live-history read and one id look-up per batch.
        With a session gate also each history's age in seconds (`scoring.history_ages`: a sent
        HISTORY is the user's now, 0; none or no time kept: inf), else None."""
        sent = [q.history if q.history is not None and q.history.size else None for q in queries]
        asking = [q.user_id for q, h in zip(queries, sent) if h is None and q.user_id is not None]
        started = time.perf_counter()
        live = (self.live_history.read(asking, clock=self.gated)
                if self.live_history is not None and (asking or self.gated) else NOTHING)
        self._timed("live_read", started)
        chosen = [h if h is not None or q.user_id is None else live.items.get(q.user_id)
                  for q, h in zip(queries, sent)]
        histories = self._item_rows_per_query(chosen)
        last_at = np.full(len(queries), -np.inf)
        for i, row in enumerate(user_rows):
            if chosen[i] is None and row >= 0:
                stored = np.asarray(self.user_history[row])
                histories[i] = stored[stored >= 0]
                if self.user_last_at is not None:
                    last_at[i] = self.user_last_at[row]
            elif sent[i] is None and chosen[i] is not None:
                last_at[i] = live.last_at.get(queries[i].user_id, -np.inf)
        if not self.gated:
            return histories, None
        clock = max(self.clock, live.clock)
        ages = history_ages(last_at, clock)
        ages[[i for i, h in enumerate(sent) if h is not None]] = 0.0
        return histories, ages

    def answer(self, queries: list[Query], text_emb: list[np.ndarray | None] | None = None
               ) -> list[Answer]:
        """Answer a batch. Every query must have passed `check`; ``text_emb`` holds the
        (TEXT_DIM,) embedding of each query's text (None where it has none; see `embed_texts`)."""
        if not queries:
            return []
        text_emb = text_emb if text_emb is not None else [None] * len(queries)
        # no USER_ID (text search) maps like an unknown user: no row
        user_rows = self.users.rows(np.array(
            [q.user_id if q.user_id is not None else _NO_USER for q in queries], dtype=np.int64))
        histories, ages = self._histories(queries, user_rows)
        excluded = self._item_rows_per_query(
            [q.exclude if q.exclude is not None and q.exclude.size else None for q in queries])
        excludes = []
        for q, h, e in zip(queries, histories, excluded):
            parts = ([h] if q.exclude_seen else []) + ([e] if e.size else [])
            excludes.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64))

        answers: list[Answer | None] = [None] * len(queries)
        # an unknown user with no usable history and no text has nothing to personalise from
        personal = [i for i, (r, h) in enumerate(zip(user_rows, histories)) if r >= 0 or h.size]
        is_personal_query = set(personal)
        scored = [i for i in range(len(queries)) if i in is_personal_query or text_emb[i] is not None]
        for i in set(range(len(queries))) - set(scored):
            answers[i] = self._popular(queries[i].k, excludes[i])
        if scored:
            query_vecs = np.zeros((len(scored), self.item_rows.shape[1]), dtype=np.float32)
            is_personal = np.array([i in is_personal_query for i in scored], dtype=bool)
            if is_personal.any():
                query_vecs[is_personal] = self._user_queries(user_rows, histories, personal)
            with_text = [j for j, i in enumerate(scored) if text_emb[i] is not None]
            if with_text:
                projected = self.text_projection(np.stack([text_emb[scored[j]] for j in with_text]))
                blend = is_personal[with_text]
                query_vecs[with_text] = np.where(
                    blend[:, None],
                    blend_text(query_vecs[with_text], projected, weight=self.text_weight),
                    projected)
            weights = session_weights(
                ages[scored] if ages is not None else np.full(len(scored), np.inf),
                weight=self.meta.popularity_weight,
                session_weight=self.meta.session_popularity_weight, session_s=self.meta.session_s)
            # text search (a text and nobody to personalise for) ranks by the text alone: the
            # prior's weight was chosen for user queries, whose norms differ; with it, a title
            # query's own item scored 0.66 against popular items' 1.17 (issue 27: 81st of
            # 1,001 on the default synthetic build; first without it)
            weights[~is_personal] = 0.0
            for i, answer in zip(scored, self._top_k(queries, query_vecs, excludes, scored,
                                                     weights)):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    def _user_queries(self, user_rows, histories, picked) -> np.ndarray:
        """(len(picked), d) float32 queries from user rows and histories (the tower)."""
        dim = self.item_rows.shape[1]
        rows = user_rows[picked]
        user_emb = np.zeros((len(picked), dim), dtype=np.float32)
        known = rows >= 0
        user_emb[known] = self.user_rows[rows[known]]
        picked_histories = [histories[i] for i in picked]
        started = time.perf_counter()
        if isinstance(self.tower, NumpySequenceTower):
            sequence, mask = self.tower.history_inputs(self.item_rows, picked_histories)
            queries = self.tower(user_emb, sequence, mask)
        else:
            pooled = self.pooled_histories(picked_histories)
            queries = np.asarray(self.tower(user_emb, pooled), np.float32)
        self._timed("tower", started)
        return queries

    def _timed(self, part: str, started: float) -> None:
        if self.part_seconds is not None:
            self.part_seconds[part] = (self.part_seconds.get(part, 0.0)
                                       + time.perf_counter() - started)

    def pooled_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """(len(histories), d) float32: each list of item rows pooled with recency weights."""
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum([h.size for h in histories], out=offsets[1:])
        ids = np.concatenate(histories).astype(np.int64) if offsets[-1] else np.zeros(0, np.int64)
        weights = recency_weights(offsets, decay=self.decay)
        pooled = kernels.gather_pool(self.item_rows, ids, offsets, weights=weights, mode="sum")
        return np.asarray(pooled, np.float32)

    def _top_k(self, queries, query_vecs, excludes, picked, weights) -> list[Answer]:
        """Top-K of each picked query, its prior (when the version has one) weighed by
        ``weights`` (len(picked),)."""
        ex_lists = [excludes[i] for i in picked]
        ex_offsets = np.zeros(len(picked) + 1, dtype=np.int64)
        np.cumsum([e.size for e in ex_lists], out=ex_offsets[1:])
        ex_ids = np.concatenate(ex_lists).astype(np.int64) if ex_offsets[-1] else np.zeros(0, np.int64)
        k_max = max(queries[i].k for i in picked)
        if self.score_rows is not self.item_rows:  # the popularity prior's column
            query_vecs = queries_with_prior(query_vecs, weights)
        started = time.perf_counter()
        scores, item_rows = kernels.score_topk(
            query_vecs, self.score_rows, k_max, exclude=(ex_offsets, ex_ids)
        )
        self._timed("score_topk", started)
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

