"""The retrieve version's schema: its table names and its typed meta, defined once.

model_repository.versions owns how a version sits on disk (manifest, shards, checksums); this
module owns what a *retrieve* version holds. The build writes it, `Retriever` serves from it, the
updater's trainer, publisher and engine read and write it, all through the names below, so adding
a table is one edit here.

    user_ids         (U,)       int64    external user ids, in row order
    user_rows        (U, d)     float32  user embeddings
    user_history     (U, H)     int64    item *rows* of each user's recent positives, most recent
                                         last, -1 where empty (on the left)
    user_adagrad     (U,)       float32  row-wise Adagrad accumulators (the updater writes them;
                                         a build's version has none: they start at zero)
    user_last_at     (U,)       float64  Unix time of each user's newest history event, -inf for
                                         none (model_repository.scoring.session_weights); older
                                         versions have none: no stored history is in session
    user_fitted      (U,)       uint8    1 where the build fitted the row, 0 for a user new since
                                         (the updater writes it; a build's version has none: its
                                         non-zero rows are the fitted ones)
    new_user_row_scale (1,)     float32  the scale `a` of the rows the updater gives users the
                                         build did not fit (updater.new_user_rows; none: 0)
    user_cooccurrence (U, d)    float32  the closed form's only: each user's sum of the
                                         co-occurrence map's rows over their whole history,
                                         ``x_u M`` (updater.cooccurrence); none: the stored
                                         history stands in for the whole one
    item_ids         (I,)       int64    external item ids, in row order
    item_rows        (I, d)     float32  item embeddings
    item_popularity  (I,)       float32  event counts (the updater's fold-in reads them)
    item_trend       (I,)       float32  event counts decayed with the meta's
                                         popularity_half_life_s, as of trend_as_of
                                         (model_repository.scoring); only when that is > 0
    trend_as_of      (1,)       float64  the Unix time item_trend's counts are as of
    item_adagrad     (I,)       float32  as user_adagrad
    tower_w1, tower_b1, tower_w2, tower_b2   the pooled user tower (model_repository.tower)
    seq_*                                the sequence user tower (model_repository.sequence_tower;
                                         shapes there): a version holds one tower's tables, the
                                         one its meta's ``tower`` names
    text_projection (TEXT_DIM, d), text_projection_bias (d,)   text -> item space, only in
                                         versions built with the text encoder
    item_cooccurrence (I0, d)  float32  the closed form's map: row k is what one co-occurrence
                                         with item row k adds to the row of an item the fit did
                                         not see (exporter.closed_form.cooccurrence_map); I0 the
                                         build's items, zero rows for those without events; only
                                         in closed-form versions. It does not grow with items.

The meta (`RetrieveMeta`) rides in the manifest's ``meta``: dimensions, the user tower's kind,
the pooling decay, the text blend weight, the popularity prior's weights and half-life
(model_repository.scoring), the versions of the models retrieve calls, and how the build chose
its settings (`train`, for the record).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

import numpy as np

from model_repository import contract as c
from model_repository import versions
from model_repository.pooling import DEFAULT_RECENCY_DECAY
from model_repository.scoring import floored_trend

USER_IDS = "user_ids"
USER_ROWS = "user_rows"
USER_HISTORY = "user_history"
USER_ADAGRAD = "user_adagrad"
USER_LAST_AT = "user_last_at"
USER_FITTED = "user_fitted"
USER_COOCCURRENCE = "user_cooccurrence"
NEW_USER_ROW_SCALE = "new_user_row_scale"
ITEM_IDS = "item_ids"
ITEM_ROWS = "item_rows"
ITEM_POPULARITY = "item_popularity"
ITEM_ADAGRAD = "item_adagrad"
ITEM_TREND = "item_trend"
TREND_AS_OF = "trend_as_of"
TOWER_W1, TOWER_B1, TOWER_W2, TOWER_B2 = "tower_w1", "tower_b1", "tower_w2", "tower_b2"
SEQ_POSITIONS = "seq_positions"
SEQ_ATTN_NORM, SEQ_ATTN_IN, SEQ_ATTN_IN_BIAS = "seq_attn_norm", "seq_attn_in", "seq_attn_in_bias"
SEQ_ATTN_OUT, SEQ_ATTN_OUT_BIAS = "seq_attn_out", "seq_attn_out_bias"
SEQ_FFN_NORM, SEQ_FFN_W1, SEQ_FFN_B1 = "seq_ffn_norm", "seq_ffn_w1", "seq_ffn_b1"
SEQ_FFN_W2, SEQ_FFN_B2, SEQ_OUT_NORM = "seq_ffn_w2", "seq_ffn_b2", "seq_out_norm"
TEXT_PROJECTION = "text_projection"
TEXT_PROJECTION_BIAS = "text_projection_bias"
ITEM_COOCCURRENCE = "item_cooccurrence"

# tables with one row per user / per item: they grow, shrink (forget-user) and train together
USER_TABLES = (USER_IDS, USER_ROWS, USER_HISTORY, USER_ADAGRAD, USER_LAST_AT, USER_FITTED)
# per-user tables a version has only when its model keeps them (the closed form's)
OPTIONAL_USER_TABLES = (USER_COOCCURRENCE,)
ITEM_TABLES = (ITEM_IDS, ITEM_ROWS, ITEM_POPULARITY, ITEM_ADAGRAD, ITEM_TREND)
TREND_TABLES = (ITEM_TREND, TREND_AS_OF)
TOWER_TABLES = (TOWER_W1, TOWER_B1, TOWER_W2, TOWER_B2)
SEQUENCE_TABLES = (SEQ_POSITIONS, SEQ_ATTN_NORM, SEQ_ATTN_IN, SEQ_ATTN_IN_BIAS, SEQ_ATTN_OUT,
                   SEQ_ATTN_OUT_BIAS, SEQ_FFN_NORM, SEQ_FFN_W1, SEQ_FFN_B1, SEQ_FFN_W2, SEQ_FFN_B2,
                   SEQ_OUT_NORM)
# the user tower's kinds (RetrieveMeta.tower): query = u + h + MLP([u, h]) over the recency-pooled
# history h (model_repository.tower), or u + SeqEncoder(last L history rows)
# (model_repository.sequence_tower)
TOWER_POOLED, TOWER_SEQUENCE = "pooled", "sequence"
TOWER_KINDS = (TOWER_POOLED, TOWER_SEQUENCE)
TOWER_TABLES_OF = {TOWER_POOLED: TOWER_TABLES, TOWER_SEQUENCE: SEQUENCE_TABLES}
TEXT_TABLES = (TEXT_PROJECTION, TEXT_PROJECTION_BIAS)
# what every servable version has; the optimiser state, the tower (older versions: in the
# user_tower model) and the text tables may be absent
REQUIRED_TABLES = (USER_IDS, USER_ROWS, USER_HISTORY, ITEM_IDS, ITEM_ROWS, ITEM_POPULARITY)
DTYPES = {
    USER_IDS: np.int64, USER_ROWS: np.float32, USER_HISTORY: np.int64, USER_ADAGRAD: np.float32,
    USER_LAST_AT: np.float64, USER_FITTED: np.uint8, NEW_USER_ROW_SCALE: np.float32,
    USER_COOCCURRENCE: np.float32,
    ITEM_IDS: np.int64, ITEM_ROWS: np.float32, ITEM_POPULARITY: np.float32,
    ITEM_ADAGRAD: np.float32, ITEM_TREND: np.float32, TREND_AS_OF: np.float64,
    **dict.fromkeys(TOWER_TABLES, np.float32),
    **dict.fromkeys(SEQUENCE_TABLES, np.float32),
    **dict.fromkeys(TEXT_TABLES, np.float32),
    ITEM_COOCCURRENCE: np.float32,
}
# the row a new user or item starts a growing table with, where no row is computed for it
EMPTY_ROW_FILL = {USER_IDS: -1, USER_ROWS: 0.0, USER_HISTORY: -1, USER_ADAGRAD: 0.0,
                  USER_LAST_AT: -np.inf, USER_FITTED: 0, USER_COOCCURRENCE: 0.0,
                  ITEM_IDS: -1, ITEM_ROWS: 0.0, ITEM_POPULARITY: 0.0, ITEM_ADAGRAD: 0.0,
                  ITEM_TREND: 0.0}


class SchemaError(versions.VersionError):
    """A retrieve version's tables or meta do not fit the schema; the message names the field."""


@dataclass(frozen=True)
class RetrieveMeta:
    """What a retrieve version says about itself beyond its tables (manifest ``meta``)."""

    dim: int                            # embedding size d of user_rows and item_rows
    history_len: int                    # H, columns of user_history
    tower: str = TOWER_POOLED           # the user tower's kind (TOWER_KINDS); older versions: pooled
    recency_decay: float = DEFAULT_RECENCY_DECAY  # model_repository.pooling
    user_tower_version: int = 1         # the user_tower version trained with these rows
    text_encoder_version: int | None = None  # None: built without the text encoder
    text_weight: float = c.DEFAULT_TEXT_WEIGHT  # model_repository.serving.blend_text
    popularity_weight: float = 0.0     # model_repository.scoring: the prior's weight (0: none)
    popularity_half_life_s: float = 0.0  # the prior's and the fallback's decay (0: all-time counts)
    trend_min_mass: float = 0.0         # below this trend mass the all-time counts fill in
                                        # (model_repository.scoring.floored_trend; 0: none)
    session_s: float = 0.0             # model_repository.scoring.session_weights (0: no sessions)
    session_popularity_weight: float = 0.0  # the prior's weight for a user in session
    train: dict | None = None          # the build's chosen settings and validation (a record)

    def __post_init__(self):
        for name in ("dim", "history_len", "user_tower_version"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise SchemaError(f"retrieve meta {name} must be a positive integer, got {value!r}")
        if self.text_encoder_version is not None and not (
                isinstance(self.text_encoder_version, numbers.Integral)
                and self.text_encoder_version >= 1):
            raise SchemaError("retrieve meta text_encoder_version must be a positive integer or "
                              f"absent, got {self.text_encoder_version!r}")
        if self.tower not in TOWER_KINDS:
            raise SchemaError(f"retrieve meta tower must be one of {', '.join(TOWER_KINDS)}, "
                              f"got {self.tower!r}")
        if not 0 < self.recency_decay <= 1:
            raise SchemaError(f"retrieve meta recency_decay must be in (0, 1], "
                              f"got {self.recency_decay!r}")
        for name in ("text_weight", "popularity_weight", "popularity_half_life_s",
                     "trend_min_mass", "session_s", "session_popularity_weight"):
            if not (isinstance(getattr(self, name), numbers.Real)
                    and 0 <= getattr(self, name) < float("inf")):
                raise SchemaError(f"retrieve meta {name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def has_prior(self) -> bool:
        """Whether any query's score carries the popularity prior (model_repository.scoring)."""
        return self.popularity_weight > 0 or (self.session_s > 0
                                               and self.session_popularity_weight > 0)

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_manifest(cls, manifest: versions.Manifest) -> RetrieveMeta:
        """The meta of a retrieve version. ``dim`` and ``history_len`` are read from the table
        shapes where the meta lacks them (hand-written versions in tests); unknown keys are
        ignored, so a newer writer's extra meta does not break an older reader."""
        raw = dict(manifest.meta)
        shapes = {name: spec.shape for name, spec in manifest.tables.items()}
        for name in (USER_ROWS, ITEM_ROWS, USER_HISTORY):
            if name not in shapes or len(shapes[name]) != 2:
                raise SchemaError(f"retrieve version {manifest.version}: table {name} is missing "
                                  "or not 2-D")
        raw.setdefault("dim", shapes[ITEM_ROWS][1])
        raw.setdefault("history_len", shapes[USER_HISTORY][1])
        known = {f.name for f in fields(cls)}
        try:
            meta = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise SchemaError(f"retrieve version {manifest.version}: meta {exc}") from None
        if shapes[ITEM_ROWS][1] != meta.dim or shapes[USER_ROWS][1] != meta.dim:
            raise SchemaError(f"retrieve version {manifest.version}: meta dim {meta.dim} but "
                              f"{USER_ROWS} {shapes[USER_ROWS]} and {ITEM_ROWS} {shapes[ITEM_ROWS]}")
        return meta


def prior_counts(tables: dict[str, np.ndarray], meta: RetrieveMeta) -> np.ndarray:
    """(I,) float32: the counts the popularity prior and the popularity fallback rank by: the
    trend (time-decayed) counts when the version has a half-life, with the all-time counts under
    them while the trend holds less than the meta's trend_min_mass (scoring.floored_trend), else
    the all-time counts."""
    if meta.popularity_half_life_s > 0:
        if ITEM_TREND not in tables or TREND_AS_OF not in tables:
            raise SchemaError(f"retrieve meta popularity_half_life_s is "
                              f"{meta.popularity_half_life_s:g} but table {ITEM_TREND} or "
                              f"{TREND_AS_OF} is missing")
        return floored_trend(tables[ITEM_TREND], tables[ITEM_POPULARITY],
                             min_mass=meta.trend_min_mass)
    return tables[ITEM_POPULARITY]


def check_tables(tables: dict[str, np.ndarray], *, where: str) -> None:
    """Raise SchemaError naming the first table that is missing, of the wrong dtype, or whose
    rows disagree with its ids (users, items). ``where`` names the version in the message."""
    for name in REQUIRED_TABLES:
        if name not in tables:
            raise SchemaError(f"{where}: table {name} is missing")
    for name, table in tables.items():
        want = DTYPES.get(name)
        if want is not None and np.dtype(table.dtype) != np.dtype(want):
            raise SchemaError(f"{where}: table {name} is {table.dtype}, expected "
                              f"{np.dtype(want).name}")
    for group, ids in (((*USER_TABLES, *OPTIONAL_USER_TABLES), USER_IDS), (ITEM_TABLES, ITEM_IDS)):
        n = len(tables[ids])
        for name in group:
            if name in tables and len(tables[name]) != n:
                raise SchemaError(f"{where}: table {name} has {len(tables[name])} rows for {n} "
                                  f"{ids}")
    cooc = tables.get(ITEM_COOCCURRENCE)
    if cooc is not None and (cooc.ndim != 2 or len(cooc) > len(tables[ITEM_IDS])
                             or cooc.shape[1] != tables[ITEM_ROWS].shape[1]):
        raise SchemaError(f"{where}: table {ITEM_COOCCURRENCE} {cooc.shape} must be (at most "
                          f"{len(tables[ITEM_IDS])} items, {tables[ITEM_ROWS].shape[1]})")


def make_tables(*, user_ids, item_ids, user_rows, item_rows, user_history, item_popularity,
                tower: dict[str, np.ndarray] | None = None,
                text_projection: dict[str, np.ndarray] | None = None,
                trend: tuple[np.ndarray, float] | None = None,
                user_last_at: np.ndarray | None = None,
                item_cooccurrence: np.ndarray | None = None,
                user_cooccurrence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A retrieve version's tables by name, cast to the schema's dtypes and checked.

    ``trend``: (item_trend, trend_as_of) for a version with a popularity half-life, else None;
    ``user_last_at``: each user's newest history event time (None: not kept).

    ``tower``: the user tower's tables (`NumpyTower.tables()`, `NumpySequenceTower.tables()`);
    ``text_projection``: the two text
    tables (`TextProjection.tables()`), or None for a build without the text encoder."""
    tables = {USER_IDS: user_ids, ITEM_IDS: item_ids, USER_ROWS: user_rows, ITEM_ROWS: item_rows,
              USER_HISTORY: user_history, ITEM_POPULARITY: item_popularity,
              **(tower or {}), **(text_projection or {})}
    if trend is not None:
        tables[ITEM_TREND], tables[TREND_AS_OF] = trend[0], np.array([trend[1]])
    if user_last_at is not None:
        tables[USER_LAST_AT] = user_last_at
    if item_cooccurrence is not None:
        tables[ITEM_COOCCURRENCE] = item_cooccurrence
    if user_cooccurrence is not None:
        tables[USER_COOCCURRENCE] = user_cooccurrence
    tables = {name: np.asarray(table, dtype=DTYPES[name]) for name, table in tables.items()}
    check_tables(tables, where="new retrieve version")
    return tables
