"""Where a `retrieve` batch spends its time, without the server: µs per request by batch size.

    OPENBLAS_NUM_THREADS=1 python -m bench.serving     # N = 1e5, d = 32, batches 1/8/32/64, K = 10
    OPENBLAS_NUM_THREADS=1 python -m bench.serving --items 1000000

(`freshrec serve` gives each python model one BLAS thread; the variable makes this process match.)

Times `Retriever.answer` (what retrieve's execute runs per batch of requests, the id look-ups,
pooling, tower, score_topk and answer assembly) on a version written by the exporter's own
`write_repository` with random tables, and beside it, timed round-robin in the same run:
- its parts alone: the numpy tower on the batch and `kernels.score_topk` with the batch's
  exclusions;
- the tower the way retrieve ran it before versions carried tower tables: the ONNX user tower
  in onnxruntime (one thread, as the `user_tower` model runs it; the BLS hop it also cost is not
  in this number);
- torch: the same tower in torch and `topk(queries @ items.T)` without exclusions (the peer);
- `answer` again with the live history store (model_repository.live_history) holding 20 recent
  items for every user, and that store's read for the batch alone: what live user state costs;
- and once more on a version with the popularity prior and its session gate (each query's
  history age from the store's times and clock, model_repository.scoring.session_weights).

Half the requests send a HISTORY of 1-20 items and all exclude what they have seen, as the load
test does. The difference between `answer` and its parts is per-request Python work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table, time_side_by_side

DEFAULT_ITEMS = 100_000
DEFAULT_USERS = 10_000
DEFAULT_BATCHES = (1, 8, 32, 64)
K = 10


def _queries(batch: int, n_users: int, n_items: int, seed: int):
    from model_repository.serving import Query

    rng = np.random.default_rng(seed)
    out = []
    for i in range(batch):
        history = None
        if i % 2:
            history = rng.integers(1, n_items + 1, size=int(rng.integers(1, 21)), dtype=np.int64)
        out.append(Query(user_id=int(rng.integers(1, n_users + 1)), k=K, history=history,
                         exclude_seen=True))
    return out


def _time_batch(retriever, live, gated, session, tower_t, items_t, batch: int, *, n_users: int,
                n_items: int, repeat: int) -> list:
    import torch

    import kernels
    from model_repository import contract as c

    queries = _queries(batch, n_users, n_items, seed=batch)
    user_rows = retriever.users.rows(np.array([q.user_id for q in queries]))
    histories, _ = retriever._histories(queries, user_rows)
    user_emb = retriever.user_rows[user_rows]
    pooled = retriever.pooled_histories(histories)
    query_vecs = retriever.tower(user_emb, pooled)
    offsets = np.zeros(batch + 1, np.int64)
    np.cumsum([h.size for h in histories], out=offsets[1:])
    excluded = np.concatenate(histories).astype(np.int64)
    user_t, pooled_t = torch.from_numpy(user_emb), torch.from_numpy(pooled)

    def torch_peer():
        with torch.no_grad():
            return torch.topk(tower_t(user_t, pooled_t) @ items_t.T, K)

    asking = [q.user_id for q in queries if q.history is None]
    times = time_side_by_side({
        "answer": lambda: retriever.answer(queries),
        "answer, live history": lambda: live.answer(queries),
        "answer, live history, gate": lambda: gated.answer(queries),
        "live read": lambda: live.live_history.recent(asking),
        "tower": lambda: retriever.tower(user_emb, pooled),
        "score_topk": lambda: kernels.score_topk(query_vecs, retriever.item_rows, K,
                                                 exclude=(offsets, excluded)),
        "onnx tower": lambda: session.run([c.QUERY], {c.USER_EMB: user_emb,
                                                      c.HISTORY_EMB: pooled}),
        "torch": torch_peer,
    }, warmup=3, repeat=repeat)
    per = {name: t.median_s * 1e6 / batch for name, t in times.items()}
    return [batch, per["answer"], per["answer, live history"],
            per["answer, live history, gate"], per["live read"], per["tower"],
            per["onnx tower"], per["score_topk"], per["answer"] - per["tower"] - per["score_topk"],
            per["torch"], per["torch"] / per["answer"]]


def _with_live_history(model_dir: Path, n_users: int, n_items: int):
    """The same version served with a live history store holding 20 recent items for every
    user (model_repository.live_history), as retrieve reads it on every batch."""
    from model_repository.live_history import LiveHistory, LiveHistoryReader, history_path
    from model_repository.serving import Retriever

    rng = np.random.default_rng(3)
    store = LiveHistory(history_path(model_dir), history_len=20)
    store.append([(u, int(i), 1.7e9) for u in range(1, n_users + 1)
                  for i in rng.integers(1, n_items + 1, size=20)], offset=1)
    store.close()
    return Retriever(model_dir / "1", live_history=LiveHistoryReader(history_path(model_dir)))


def _with_session_gate(model_dir: Path, n_users: int):
    """Version 2: version 1's tables with each user's newest event time, served with the prior
    and its session gate, reading the same live history store."""
    from model_repository import retrieve_schema as schema
    from model_repository import versions
    from model_repository.live_history import LiveHistoryReader, history_path
    from model_repository.serving import Retriever

    manifest, tables = versions.load_tables(model_dir / "1")
    tables = {name: np.asarray(table) for name, table in tables.items()}
    rng = np.random.default_rng(4)
    tables[schema.USER_LAST_AT] = 1.7e9 - rng.uniform(0, 7200, len(tables[schema.USER_IDS]))
    meta = {**manifest.meta, "popularity_weight": 1.0, "session_s": 3600.0,
            "session_popularity_weight": 0.1}
    versions.write_version(model_dir, 2, tables, meta=meta)
    return Retriever(model_dir / "2", live_history=LiveHistoryReader(history_path(model_dir)))


def run(n_items: int, n_users: int, batches, repeat: int) -> None:
    import onnxruntime as ort
    import torch

    from bench.e2e import random_model
    from exporter.build import write_repository
    from model_repository import contract as c
    from model_repository.serving import Retriever

    torch.set_num_threads(1)  # retrieve is one single-threaded python model instance
    rows = []
    with tempfile.TemporaryDirectory(prefix="freshrec-serving-") as scratch:
        model = random_model(n_items, n_users)
        repository = write_repository(model, Path(scratch) / "repository", tensorrt=False).repository
        retriever = Retriever(repository / c.RETRIEVE / "1")
        assert retriever.tower_from_tables
        live = _with_live_history(repository / c.RETRIEVE, n_users, n_items)
        gated = _with_session_gate(repository / c.RETRIEVE, n_users)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(repository / c.USER_TOWER / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        items_t = torch.from_numpy(np.array(retriever.item_rows))  # a writable copy
        for batch in batches:
            rows.append(_time_batch(retriever, live, gated, session, model.tower, items_t, batch,
                                    n_users=n_users, n_items=n_items, repeat=repeat))
    print(machine_header([
        f"model: N = {n_items} items x d = {model.item_rows.shape[1]} fp32, {n_users} users, "
        f"random tables, K = {K}; half the requests send a HISTORY of 1-20 ids, all exclude seen",
        f"method: median of {repeat} calls per batch, candidates timed round-robin; torch and "
        "onnxruntime on one thread, as a python model instance runs; OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
    ]))
    print_table(["batch", "answer us/req", "+ live history", "+ prior, session gate",
                 "live read", "tower", "onnx tower",
                 "score_topk", "rest", "torch us/req", "torch / answer"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS)
    parser.add_argument("--model-users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    run(args.items, args.model_users, [int(b) for b in args.batches.split(",")], args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
