"""What each version's quality record (updater.quality) costs the updater's engine thread.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m bench.quality_record   # 20 batches a row
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m bench.quality_record --quick   # 5

A random retrieve version (pooled tower, d = 64, H = 20, a popularity prior with a session gate)
is written twice, as versions 1 and 2, and the meter alternates between them batch by batch, so
every batch loads the serving version's Retriever anew, as at the default publish cadence (a
version per batch); "same version" keeps one. Each batch of clicks (random users and items) is
measured with the bound given (`--quality-events-per-batch`; 256: every event), then trained.
The peer, in the same run on the same batches: the training itself
(`SparseTrainer.apply_many`). Thread CPU time; the updater runs with one BLAS and one
onnxruntime thread (updater.settings.one_blas_thread), hence the variables above.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.tower import NumpyTower
from updater.events import validate
from updater.quality import QualityMeter
from updater.settings import BLAS_THREAD_VARS, DEFAULT_QUALITY_EVENTS_PER_BATCH, QualityPolicy
from updater.trainer import SparseTrainer

DIM, HISTORY, USERS, BATCH = 64, 20, 10_000, 256
T0 = 1.7e9


def _tables(n_items: int, rng) -> tuple[dict, NumpyTower]:
    hidden = 64
    tower = NumpyTower(rng.normal(0, 0.05, (hidden, 2 * DIM)), np.zeros(hidden),
                       rng.normal(0, 0.05, (DIM, hidden)), np.zeros(DIM))
    history = rng.integers(0, n_items, (USERS, HISTORY))
    tables = schema.make_tables(
        user_ids=np.arange(USERS) + 10**6, item_ids=np.arange(n_items) + 10**7,
        user_rows=rng.normal(0, 0.3, (USERS, DIM)), item_rows=rng.normal(0, 0.3, (n_items, DIM)),
        user_history=history, item_popularity=rng.integers(0, 100, n_items), tower=tower.tables(),
        user_last_at=T0 - rng.exponential(86400.0, USERS))
    return tables, tower


def _run(n_items: int, per_batch: int, batches: int, *, reload: bool) -> tuple[float, float]:
    """(quality ms, training ms) of CPU per 1,000 events."""
    rng = np.random.default_rng(n_items)
    tables, tower = _tables(n_items, rng)
    meta = schema.RetrieveMeta(dim=DIM, history_len=HISTORY, popularity_weight=0.5,
                               session_s=3600.0, session_popularity_weight=0.1).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "retrieve"
        for version in (1, 2):
            versions.write_version(model_dir, version, tables, meta=meta)
        trainer = SparseTrainer(tables, tower)
        meter = QualityMeter(policy=QualityPolicy(events_per_batch=per_batch))
        quality_s = training_s = 0.0
        for b in range(-1, batches):  # batch -1 warms up (onnxruntime's session), untimed
            users = rng.integers(0, USERS, BATCH) + 10**6
            items = rng.integers(0, n_items, BATCH) + 10**7
            events = []
            for i, (u, it) in enumerate(zip(users.tolist(), items.tolist())):
                t = T0 + (b + 1) * BATCH + i
                events.append(replace(validate(f"e{b}-{i}", u, it, "click", 0.0, t, now=t),
                                      offset=(b + 1) * BATCH + i + 1))
            started = time.thread_time()
            meter.measure(events, trainer, model_dir / str(1 + b % 2 if reload else 1))
            measured = time.thread_time()
            trainer.apply_many(events)
            if b >= 0:
                quality_s += measured - started
                training_s += time.thread_time() - measured
    per_1000 = 1000.0 / (batches * BATCH) * 1e3
    return quality_s * per_1000, training_s * per_1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 batches a row instead of 20")
    args = parser.parse_args(argv)
    batches = 5 if args.quick else 20
    threads = ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in BLAS_THREAD_VARS)
    print(machine_header([f"d={DIM}, H={HISTORY}, {USERS} users, batches of {BATCH} clicks, "
                          f"{batches} batches a row; thread CPU time; {threads}"]))
    rows = []
    for n_items in (5_000, 100_000):
        for per_batch, reload in ((16, True), (DEFAULT_QUALITY_EVENTS_PER_BATCH, True),
                                  (DEFAULT_QUALITY_EVENTS_PER_BATCH, False), (64, True),
                                  (BATCH, True)):
            quality_ms, training_ms = _run(n_items, per_batch, batches, reload=reload)
            rows.append([n_items, per_batch, "new each batch" if reload else "same version",
                         quality_ms * BATCH / 1000, quality_ms, training_ms,
                         quality_ms / training_ms])
    print_table(["items", "asked a batch", "Retriever", "quality ms a batch",
                 "quality ms / 1k events", "training ms / 1k events", "quality / training"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
