"""`freshrec build`: data -> trained base model -> quality table -> a complete Triton repository.

The repository holds three models: `user_tower` (ONNX file run by onnxruntime in the python
backend; a TensorRT plan beside it on GPU hosts), `retrieve` (python backend over the version's
tables) and `recommend` (the public ensemble entry point). Version 1 of each is written through
model_repository.versions, the owner of the on-disk format.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter import data as datasets
from exporter.evaluate import evaluate, format_quality_table
from exporter.onnx_export import build_tensorrt_plan, check_onnx_parity, export_user_tower
from exporter.train import TrainConfig, TrainedModel, save_tower, train_base_model
from model_repository import configs, templates, versions
from model_repository import contract as c

log = logging.getLogger(__name__)

REPOSITORY_DIR = "repository"
DATA_DIR = "data"
ONNX_FILE = "model.onnx"
TOWER_FILE = "tower.pt"
PLAN_FILE = "model.plan"
FIRST_VERSION = 1


class BuildError(RuntimeError):
    """The build cannot go on; the message says why."""


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    ratings: Path
    quality_table: str
    onnx_max_abs_err: float
    tensorrt_plan: Path | None


def retrieve_tables(model: TrainedModel) -> dict[str, np.ndarray]:
    """The tables a retrieve version serves from, by name (the names model.py reads)."""
    return {
        "user_ids": np.asarray(model.user_ids, dtype=np.int64),
        "item_ids": np.asarray(model.item_ids, dtype=np.int64),
        "user_rows": np.asarray(model.user_rows, dtype=np.float32),
        "item_rows": np.asarray(model.item_rows, dtype=np.float32),
        "user_history": np.asarray(model.user_history, dtype=np.int64),
        "item_popularity": np.asarray(model.item_popularity, dtype=np.float32),
    }


def write_repository(model: TrainedModel, repository: Path, *, tensorrt: bool = True) -> BuildResult:
    """Export `model` as version 1 of a fresh repository. Returns what was written."""
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
        configs.write_config(repository / c.USER_TOWER, configs.user_tower_config(dim=dim))
        versions.write_version(
            repository / c.USER_TOWER, FIRST_VERSION, {}, files=tower_files, meta={"dim": dim}
        )
    configs.write_config(repository / c.RETRIEVE, configs.retrieve_config())
    versions.write_version(
        repository / c.RETRIEVE,
        FIRST_VERSION,
        retrieve_tables(model),
        files={"model.py": templates.template(c.RETRIEVE)},
        meta={
            "dim": dim,
            "user_tower_version": FIRST_VERSION,
            "history_len": model.config.history_len,
            "recency_decay": model.config.recency_decay,
        },
    )
    configs.write_config(repository / c.RECOMMEND, configs.recommend_config())
    # an ensemble has no files of its own, but Triton wants a version folder
    versions.write_version(repository / c.RECOMMEND, FIRST_VERSION, {})
    return BuildResult(repository, Path(), "", max_err, plan)


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
) -> BuildResult:
    """Train on the earliest 80 % of events, evaluate on the rest, export version 1 under out/."""
    out = Path(out)
    repository = out / REPOSITORY_DIR
    if repository.exists():
        if not force:
            raise BuildError(f"{repository} exists; pass --force to replace it")
        shutil.rmtree(repository)
    if synthetic == (data is not None):
        raise BuildError("give exactly one of --data PATH or --synthetic")
    if synthetic:
        dataset = datasets.generate_synthetic(**(synthetic_kwargs or {}), progress=progress)
        ratings = datasets.write_dataset(dataset, out / DATA_DIR)
    else:
        ratings = Path(data)
        dataset = datasets.read_dataset(ratings, items)
    train, test = datasets.split_by_time(dataset.interactions)
    log.info("training on %d events, evaluating on %d", len(train), len(test))
    model = train_base_model(train, items=dataset.items, config=config or TrainConfig(),
                             progress=progress)
    quality = format_quality_table(evaluate(model, train, test))
    result = write_repository(model, repository, tensorrt=tensorrt)
    return BuildResult(repository, ratings, quality, result.onnx_max_abs_err, result.tensorrt_plan)
