"""`freshrec build`: data -> trained base model -> quality table -> a complete Triton repository.

The repository holds three models: `user_tower` (ONNX file run by onnxruntime in the python
backend; a TensorRT plan beside it on GPU hosts), `retrieve` (python backend over the version's
tables) and `recommend` (the public ensemble entry point); a fourth, `text_encoder` (MiniLM,
tokenizers + onnxruntime), when the items have titles and ``text_encoder`` is not turned off.
Version 1 of each is written through model_repository.versions, the owner of the on-disk format.

With the text encoder, a random DEFAULT_COLD_FRACTION of the titled items is held out of training
entirely (cold items), every titled item without training events gets its row from its projected
title, and the build reports recall@10 on cold-item targets next to random and popularity.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from exporter import DATA_DIR, DEFAULT_SEARCH_BUDGET_S, REPOSITORY_DIR
from exporter import data as datasets
from exporter.evaluate import evaluate, format_quality_table
from exporter.onnx_export import build_tensorrt_plan, check_onnx_parity, export_user_tower
from exporter.search import Prior, SearchResult, describe_half_life, score
from exporter.search import search as search_settings
from exporter.synthetic import generate_synthetic
from exporter.text_projection import (
    apply_text_rows,
    cold_item_quality,
    drop_items,
    pick_cold_items,
    titled_rows,
)
from exporter.towers import numpy_tower, save_tower
from exporter.train import METHOD_EASE, TrainConfig, TrainedModel, train_base_model
from model_repository import configs, templates, versions
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository.projection import TextProjection
from model_repository.text_encoding import ONNX_FILE as TEXT_ONNX_FILE
from model_repository.text_encoding import TOKENIZER_FILE, TextEncoderRuntime
from model_repository.tower import TOWER_FILE

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
FIRST_VERSION = 1
COLD_TABLE_COLUMNS = ("recall@10", "ndcg@10")
ENCODE_BATCH = 128  # titles per onnxruntime call while building


class BuildError(RuntimeError):
    """The build cannot go on; the message says why."""


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    ratings: Path
    quality_table: str
    onnx_max_abs_err: float
    tensorrt_plan: Path | None
    text_parity_max_abs_err: float | None = None  # None: built without the text encoder
    cold_quality_table: str = ""                  # "" : built without the text encoder
    cold_items: int = 0
    search: SearchResult | None = None              # None: settings given, not searched
    tower: str = schema.TOWER_POOLED                # the user tower's kind


@dataclass(frozen=True)
class TextExport:
    """What the `text_encoder` version and retrieve's text tables are written from."""

    onnx_path: Path
    tokenizer_path: Path
    projection: TextProjection
    plan_path: Path | None = None  # TensorRT, GPU hosts only


def retrieve_tables(model: TrainedModel, projection: TextProjection | None = None
                    ) -> dict[str, np.ndarray]:
    """The tables a retrieve version serves from (model_repository.retrieve_schema)."""
    return schema.make_tables(
        user_ids=model.user_ids, item_ids=model.item_ids, user_rows=model.user_rows,
        item_rows=model.item_rows, user_history=model.user_history,
        item_popularity=model.item_popularity, tower=numpy_tower(model.tower).tables(),
        text_projection=None if projection is None else projection.tables(),
        trend=((model.item_trend, model.trend_as_of) if model.popularity_half_life_s > 0
               else None),
        user_last_at=model.user_last_at, item_cooccurrence=model.item_cooccurrence,
        user_cooccurrence=model.user_cooccurrence)


def write_repository(model: TrainedModel, repository: Path, *, tensorrt: bool = True,
                     text: TextExport | None = None, train_record: dict | None = None,
                     feedback_offset: int = 0) -> BuildResult:
    """Export `model` as version 1 of a fresh repository (with `text_encoder` when ``text`` is
    given). ``train_record``: how its settings were chosen and how the build scored, kept in the
    retrieve manifest; ``feedback_offset``: the updater log offset its events reach (0: none).
    Returns what was written."""
    repository = Path(repository)
    dim = int(model.item_rows.shape[1])
    with tempfile.TemporaryDirectory(prefix="freshrec-export-") as scratch:
        scratch = Path(scratch)
        onnx_path = export_user_tower(model.tower, scratch / ONNX_FILE, dim=dim)
        max_err = check_onnx_parity(model.tower, onnx_path, dim=dim)
        save_tower(model.tower, scratch / TOWER_FILE)
        tower_files = {"model.py": templates.template(c.USER_TOWER), ONNX_FILE: onnx_path,
                       TOWER_FILE: scratch / TOWER_FILE}
        plan = build_tensorrt_plan(onnx_path, scratch / PLAN_FILE) if tensorrt else None
        if plan is not None:
            tower_files[PLAN_FILE] = plan
        configs.write_config(repository / c.USER_TOWER, configs.user_tower_config())
        versions.write_version(
            repository / c.USER_TOWER, FIRST_VERSION, {}, files=tower_files,
            meta={"dim": dim, "tower": model.tower.kind}
        )
    if text is not None:
        configs.write_config(repository / c.TEXT_ENCODER, configs.text_encoder_config())
        versions.write_version(
            repository / c.TEXT_ENCODER, FIRST_VERSION, {},
            files={"model.py": templates.template(c.TEXT_ENCODER), TEXT_ONNX_FILE: text.onnx_path,
                   TOKENIZER_FILE: text.tokenizer_path,
                   **({PLAN_FILE: text.plan_path} if text.plan_path is not None else {})},
            meta={"dim": c.TEXT_DIM, "max_tokens": c.MAX_TEXT_TOKENS,
                  "max_chars": c.MAX_TEXT_CHARS},
        )
    configs.write_config(repository / c.RETRIEVE, configs.retrieve_config())
    versions.write_version(
        repository / c.RETRIEVE,
        FIRST_VERSION,
        retrieve_tables(model, text.projection if text is not None else None),
        feedback_offset=feedback_offset, files={"model.py": templates.template(c.RETRIEVE)},
        meta=schema.RetrieveMeta(
            dim=dim, history_len=model.config.history_len, tower=model.tower.kind,
            recency_decay=model.config.recency_decay, user_tower_version=FIRST_VERSION,
            text_encoder_version=FIRST_VERSION if text is not None else None,
            popularity_weight=model.popularity_weight,
            popularity_half_life_s=model.popularity_half_life_s,
            trend_min_mass=model.trend_min_mass, session_s=model.session_s,
            session_popularity_weight=model.session_popularity_weight, train=train_record,
        ).to_dict(),
    )
    configs.write_config(repository / c.RECOMMEND, configs.recommend_config())
    # an ensemble has no files of its own, but Triton wants a version folder
    versions.write_version(repository / c.RECOMMEND, FIRST_VERSION, {})
    return BuildResult(repository, Path(), "", max_err, plan, tower=model.tower.kind)


def _prior_by_hand(popularity_weight, popularity_half_life_s, session_s,
                   session_popularity_weight) -> dict[str, float]:
    """The prior's settings given by hand (not None), by their parameter names."""
    given = {"popularity_weight": popularity_weight,
             "popularity_half_life_s": popularity_half_life_s, "session_s": session_s,
             "session_popularity_weight": session_popularity_weight}
    return {name: value for name, value in given.items() if value is not None}


def train_model(train: datasets.Interactions, *, items: datasets.Items | None,
                config: TrainConfig | None, search: bool,
                search_budget_s: float = DEFAULT_SEARCH_BUDGET_S, progress: bool = True,
                popularity_weight: float | None = None,
                popularity_half_life_s: float | None = None,
                session_s: float | None = None,
                session_popularity_weight: float | None = None,
                chosen: SearchResult | None = None
                ) -> tuple[TrainedModel, SearchResult | None]:
    """The model `build` serves: trained with ``config`` (the defaults when None), or, with
    ``search``, with the settings and popularity prior chosen on a validation slice of ``train``
    starting from ``config`` (exporter.search). ``popularity_weight``,
    ``popularity_half_life_s`` (0: all-time counts), ``session_s`` (0: no session gate) and
    ``session_popularity_weight``, when given, set the prior by hand over what the search chose
    (or without a search). ``chosen``: a search's result to train with again (no search: a
    refit on more events with the settings chosen before). Returns the model and the search's
    result."""
    for name, value in _prior_by_hand(popularity_weight, popularity_half_life_s, session_s,
                                      session_popularity_weight).items():
        if not 0 <= value < float("inf"):
            raise BuildError(f"{name} must be >= 0, got {value!r}")
    if search and chosen is None:
        say = tqdm.write if progress else log.info
        chosen = search_settings(train, items=items, base=config or TrainConfig(),
                                 budget_s=search_budget_s, say=say)
    model = train_base_model(train, items=items,
                             config=chosen.config if chosen else config or TrainConfig(),
                             progress=progress)
    (chosen.prior if chosen else Prior()).apply(model)
    half_life = chosen.popularity_half_life_s if chosen else 0.0
    if popularity_weight is not None:
        model.popularity_weight = float(popularity_weight)
    if popularity_half_life_s is not None:
        half_life = float(popularity_half_life_s)
    if session_s is not None:
        model.session_s = float(session_s)
    if session_popularity_weight is not None:
        model.session_popularity_weight = float(session_popularity_weight)
    model.set_trend(train, half_life)
    return model, chosen


def build(
    out: Path,
    *,
    data: Path | None = None,
    items: Path | None = None,
    synthetic: bool = False,
    config: TrainConfig | None = None,
    synthetic_kwargs: dict | None = None,
    force: bool = False,
    progress: bool = True,
    tensorrt: bool = True,
    text_encoder: bool | None = None,
    search: bool | None = None,
    search_budget_s: float = DEFAULT_SEARCH_BUDGET_S,
    popularity_weight: float | None = None,
    popularity_half_life_s: float | None = None,
    session_s: float | None = None,
    session_popularity_weight: float | None = None,
    feedback: datasets.Interactions | None = None,
    feedback_offset: int = 0,
) -> BuildResult:
    """Train on the earliest 80 % of events, evaluate on the rest, export version 1 under out/.

    ``feedback``: the updater's logged events up to log offset ``feedback_offset`` (a nightly
    retrain, freshrec.retrain), trained on with the data's: the settings are searched and the
    report made on the 80 / 20 split of both as always, then the model is fitted again with
    those settings on every event, so the exported base has seen the feedback (the newest 20 %
    would be most of it) and a push replays only the events after ``feedback_offset``.

    ``text_encoder``: export MiniLM as `text_encoder`, learn the text projection, hold cold items
    out and report their quality; None (the default) means "when the items have titles".
    ``search``: choose the settings and the popularity prior on a validation slice of the
    training window (exporter.search) within ``search_budget_s``; None (the default) means "when
    no ``config`` is given"; with a ``config`` and no search, the prior stays off unless
    ``popularity_weight`` / ``popularity_half_life_s`` / ``session_s`` /
    ``session_popularity_weight`` set it by hand (they also override the search's choice; the
    manifest's record says so)."""
    out = Path(out)
    repository = out / REPOSITORY_DIR
    if repository.exists():
        if not force:
            raise BuildError(f"{repository} exists; pass --force to replace it")
        shutil.rmtree(repository)
    if synthetic == (data is not None):
        raise BuildError("give exactly one of --data PATH or --synthetic")
    if synthetic:
        dataset = generate_synthetic(**(synthetic_kwargs or {}), progress=progress)
        ratings = datasets.write_dataset(dataset, out / DATA_DIR)
    else:
        ratings = Path(data)
        dataset = datasets.read_dataset(ratings, items)
    everything = dataset.interactions
    if feedback is not None:
        everything = datasets.concat(everything, feedback)
        log.info("with %d logged feedback events up to offset %d", len(feedback), feedback_offset)
    train, test = datasets.split_by_time(everything)
    has_titles = dataset.items is not None and any(t.strip() for t in dataset.items.titles)
    if text_encoder is None:
        text_encoder = has_titles
    if text_encoder and not has_titles:
        raise BuildError("the text encoder needs item titles: give --items with titles, or turn "
                         "it off with --no-text-encoder")
    cold_ids = pick_cold_items(dataset.items) if text_encoder else np.zeros(0, np.int64)
    train = drop_items(train, cold_ids)  # cold items: held out of training entirely
    log.info("training on %d events, evaluating on %d", len(train), len(test))
    by_hand = _prior_by_hand(popularity_weight, popularity_half_life_s, session_s,
                             session_popularity_weight)
    model, chosen = train_model(train, items=dataset.items, config=config,
                                search=search if search is not None else config is None,
                                search_budget_s=search_budget_s, progress=progress, **by_hand)
    record = chosen.record() if chosen else {}
    if by_hand:
        record["by_hand"] = by_hand
    if feedback is not None:
        record["refit_events"] = len(everything)
    written = {"train_record": record, "feedback_offset": feedback_offset}

    def refit() -> TrainedModel:
        """The exported model of a retrain: the chosen settings, fitted on every event."""
        log.info("fitting again on all %d events with the settings chosen", len(everything))
        return train_model(drop_items(everything, cold_ids), items=dataset.items, config=config,
                           search=False, chosen=chosen, progress=progress, **by_hand)[0]

    if not text_encoder:
        scored = evaluate(model, train, test)
        record["test"] = test_record(scored, test)
        if feedback is not None:
            model = refit()
        result = write_repository(model, repository, tensorrt=tensorrt, **written)
        return BuildResult(repository, ratings, format_quality_table(scored),
                           result.onnx_max_abs_err, result.tensorrt_plan, search=chosen,
                           tower=model.tower.kind)
    with tempfile.TemporaryDirectory(prefix="freshrec-text-") as scratch:
        text, parity = text_export(model, dataset.items, Path(scratch), tensorrt=tensorrt)
        scored = evaluate(model, train, test)  # cold items scored with their title rows
        record["test"] = test_record(scored, test)
        cold = format_quality_table(cold_item_quality(model, train, test, cold_ids),
                                    columns=COLD_TABLE_COLUMNS)
        if feedback is not None:
            model = refit()
            text = replace(text, projection=project_titles(model, dataset.items, text))
        result = write_repository(model, repository, tensorrt=tensorrt, text=text, **written)
    return BuildResult(repository, ratings, format_quality_table(scored),
                       result.onnx_max_abs_err, result.tensorrt_plan,
                       text_parity_max_abs_err=parity, cold_quality_table=cold,
                       cold_items=int(cold_ids.size), search=chosen, tower=model.tower.kind)


def test_record(scored: dict[str, dict[str, float]], test: datasets.Interactions) -> dict:
    """What the manifest keeps of the build's report (``evaluate``'s rows on the latest 20 %):
    the model's and popularity's metrics, the users scored, and the slice's time span. A push
    is judged on it (issue 28: a base worse on its own slice than the serving one is refused)."""
    def rounded(metrics):
        return {k: round(float(v), 5) for k, v in metrics.items() if k != "users"}

    return {"model": rounded(scored["model"]), "popularity": rounded(scored["popularity"]),
            "users": int(scored["model"]["users"]),
            "from_s": int(test.timestamps[0]) if len(test) else 0,
            "to_s": int(test.timestamps[-1]) if len(test) else 0}


def describe_choice(chosen: SearchResult) -> str:
    """What the search chose, in a line or two (the CLI prints it)."""
    c = chosen.config
    if c.method == METHOD_EASE:
        settings = (f"closed form ({c.tower} tower, exporter.closed_form): rank {c.dim}, EASE l2 "
                    f"{c.ease_l2:g}, history weight {c.history_weight:g}")
    else:
        settings = (f"{c.tower} tower trained: dim {c.dim}, epochs {c.epochs}, lr {c.lr:g}, l2 "
                    f"{c.l2:g}, negatives {c.negatives}")
    recent = chosen.recent_popularity_valid or chosen.popularity_valid
    line = (f"chosen on the validation slice, {settings}, {chosen.prior.describe()}, half-life "
            f"{describe_half_life(chosen.popularity_half_life_s)} "
            f"(valid recall@10 {chosen.valid['recall@10']:.4f}, next event "
            f"{chosen.valid['next recall@10']:.4f}, score {score(chosen.valid):.4f}; popularity "
            f"{score(chosen.popularity_valid):.4f}, recent popularity {score(recent):.4f})")
    if chosen.loses_to_popularity:
        line += ("\nwarning: on validation the model still loses to popularity; it is served with "
                 "the popularity prior that scored best, which ranks close to popularity")
    return line


def text_export(model: TrainedModel, items: datasets.Items, scratch: Path, *, tensorrt: bool
                 ) -> tuple[TextExport, float]:
    """Export MiniLM to ONNX under ``scratch`` (parity checked; a TensorRT plan too on GPU hosts),
    encode every title with it, fit the projection and give titled items without training events
    their projected rows."""
    from exporter.text_encoder import (  # torch + transformers: only builds with text need them
        PLAN_SHAPES,
        check_text_parity,
        export_text_encoder,
        load_torch_encoder,
        tokenizer_file,
    )

    tokenizer_path = tokenizer_file()
    encoder = load_torch_encoder()
    onnx_path = export_text_encoder(encoder, scratch / TEXT_ONNX_FILE)
    parity = check_text_parity(encoder, onnx_path, tokenizer_path=tokenizer_path)
    plan = (build_tensorrt_plan(onnx_path, scratch / PLAN_FILE, profile_shapes=PLAN_SHAPES)
            if tensorrt else None)
    exported = TextExport(onnx_path, tokenizer_path, None, plan)
    return replace(exported, projection=project_titles(model, items, exported)), parity


def project_titles(model: TrainedModel, items: datasets.Items, text: TextExport) -> TextProjection:
    """Encode every title with the exported encoder, fit the projection on ``model``'s item
    rows and give its titled items without training events their projected rows."""
    runtime = TextEncoderRuntime(text.onnx_path, text.tokenizer_path)
    rows, titles = titled_rows(model, items)
    text_emb = np.concatenate([runtime.encode(titles[i:i + ENCODE_BATCH])
                               for i in range(0, len(titles), ENCODE_BATCH)])
    projection, _ = apply_text_rows(model, rows, text_emb)
    return projection
