"""The sequential peer of bench.quality: RecBole's SASRec, a maintained implementation.

Optional: `pip install -e '.[bench-seq]'` (RecBole is never a serving dependency); without it
bench.quality prints `recbole_missing()` and leaves the row out.

Protocol (global time split): SASRec is trained once, with RecBole's own data pipeline and
trainer, on the training window (every training event is a next-item example after the user's
earlier ones, cross-entropy over the catalogue); in the replay each event is then predicted from
the user's last `max_len` events before it, training and replayed alike (`send` appends each
event right after its question), with no retraining. Items first seen after the cut are outside
its vocabulary: never recommended, dropped from histories. A user with no usable history gets
the popularity ranking (training events plus every window learned).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.peers import top_k_columns
from bench.replay import PopularityRecommender, RecentItems
from exporter.data import Interactions

log = logging.getLogger(__name__)

DATASET_NAME = "freshrec"
# RecBole's SASRec defaults (2 layers, 2 heads, hidden 64, dropout 0.5, Adam lr 1e-3) except:
# CE loss over the whole catalogue (RecBole's sequential examples, no sampled negatives), batch
# 256, and the last 20 items (the base model's history_len) instead of 50. CPU is the budget: with
# 50 items one epoch of ml-100k's 80,000 training events took 100-350 s on the 2 shared cores
# (0.3-1.1 s a step of 256), and the cost is linear in the length.
DEFAULT_EPOCHS = 5
DEFAULT_MAX_LEN = 20
DEFAULT_BATCH = 256
PREDICT_BATCH = 512


def recbole_missing() -> str | None:
    """Why the SASRec row cannot run here, or None when RecBole is importable."""
    if importlib.util.find_spec("recbole") is None:
        return "RecBole is not installed (pip install -e '.[bench-seq]')"
    return None


def write_atomic_inter(events: Interactions, folder: Path) -> Path:
    """RecBole's atomic .inter file of `events` (tab separated, typed header) under folder/NAME/."""
    path = folder / DATASET_NAME / f"{DATASET_NAME}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, item, timestamp in zip(events.user_ids.tolist(), events.item_ids.tolist(),
                                         events.timestamps.tolist()):
            f.write(f"{user}\t{item}\t{timestamp}\n")
    return path


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _quiet_recbole() -> Iterator[None]:
    """RecBole's Config also reads `--key=value` flags from sys.argv (bench.quality's own flags
    would leak in), and RecBole 1.2.1 warns about its own calls on pandas 2.3 / torch 2.13
    (a chained `fillna(inplace=True)` on float columns, which ours never hold NaN in;
    torch.cuda.amp.GradScaler; a non-writable numpy array made a tensor); none bears on the
    result, and the test suite turns warnings into errors."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=r"recbole\.")
            yield
    finally:
        sys.argv = argv


class SASRecRecommender:
    """A bench.replay StreamingRecommender: SASRec trained once on `train` (in the constructor,
    `fit_s` seconds), answering from each user's live sequence."""

    def __init__(self, train: Interactions, *, workdir: Path, epochs: int = DEFAULT_EPOCHS,
                 max_len: int = DEFAULT_MAX_LEN, batch_size: int = DEFAULT_BATCH, seed: int = 0):
        self.epochs, self.max_len, self.batch_size = epochs, max_len, batch_size
        self.recent = RecentItems(max_len, train)
        self.popularity = PopularityRecommender(train)
        started = time.perf_counter()
        self._fit(train, Path(workdir), seed=seed)
        self.fit_s = time.perf_counter() - started

    def describe(self) -> str:
        from importlib.metadata import version

        return (f"SASRec: RecBole {version('recbole')}, {self.epochs} epochs, last {self.max_len} "
                f"items, batch {self.batch_size}, {len(self.item_ids)} items in its vocabulary")

    def _fit(self, train: Interactions, workdir: Path, *, seed: int) -> None:
        import torch

        self._torch = torch
        write_atomic_inter(train, workdir)
        with _quiet_recbole():
            self._train(workdir, seed=seed)

    def _train(self, workdir: Path, *, seed: int) -> None:
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.sequential_recommender import SASRec
        from recbole.trainer import Trainer
        from recbole.utils import init_seed

        config = Config(model="SASRec", dataset=DATASET_NAME, config_dict={
            "data_path": str(workdir), "checkpoint_dir": str(workdir / "saved"),
            "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
            "MAX_ITEM_LIST_LENGTH": self.max_len, "loss_type": "CE", "train_neg_sample_args": None,
            "epochs": self.epochs, "train_batch_size": self.batch_size,
            # every training event trains; the (empty) valid and test parts are never read
            "eval_args": {"order": "TO", "split": {"RS": [1.0, 0.0, 0.0]}, "group_by": None,
                          "mode": "full"},
            "device": "cpu", "use_gpu": False, "seed": seed, "reproducibility": True,
            "show_progress": False, "log_wandb": False,
        })
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, _, _ = data_preparation(config, dataset)
        self.model = SASRec(config, train_data._dataset)
        # RecBole's Trainer writes TensorBoard logs under ./log_tensorboard, relative to the
        # working directory when it opens and again at the end of fit (add_hparams), so it runs
        # inside the scratch folder. No validation, no checkpoint: the model of the last epoch.
        with _working_directory(workdir):
            trainer = Trainer(config, self.model)
            trainer.fit(train_data, valid_data=None, saved=False, verbose=False, show_progress=False)
            # its writer thread writes through that relative path: flushed and closed before we
            # leave the folder (else a late write raised FileNotFoundError in that thread)
            trainer.tensorboard.close()
        self.model.eval()
        tokens = dataset.field2id_token[config["ITEM_ID_FIELD"]]  # index 0 is [PAD]
        external = np.array([int(t) for t in tokens[1:]], dtype=np.int64)
        order = np.argsort(external)
        self.item_ids = external[order]                 # sorted external ids
        self.item_columns = order.astype(np.int64) + 1  # their RecBole ids
        self.by_column = np.zeros(len(tokens), np.int64)
        self.by_column[self.item_columns] = self.item_ids

    def _columns(self, ids: np.ndarray) -> np.ndarray:
        """RecBole ids of the external ids in its vocabulary, order kept (others dropped)."""
        at = np.searchsorted(self.item_ids, ids).clip(max=len(self.item_ids) - 1)
        return self.item_columns[at[self.item_ids[at] == ids]]

    def recommend(self, user_ids: np.ndarray, excludes: Sequence[np.ndarray], k: int
                  ) -> list[np.ndarray]:
        from recbole.data.interaction import Interaction

        torch = self._torch
        sequences = [self._columns(self.recent.of(user))[-self.max_len:] for user in user_ids.tolist()]
        answers: list[np.ndarray | None] = [None] * len(user_ids)
        asked = [n for n, seq in enumerate(sequences) if seq.size]
        for lo in range(0, len(asked), PREDICT_BATCH):
            batch = asked[lo:lo + PREDICT_BATCH]
            items = np.zeros((len(batch), self.max_len), np.int64)
            for row, n in enumerate(batch):
                items[row, :sequences[n].size] = sequences[n]  # RecBole's layout: left aligned
            lengths = np.array([sequences[n].size for n in batch], np.int64)
            with torch.no_grad():
                scores = self.model.full_sort_predict(Interaction({
                    self.model.ITEM_SEQ: torch.from_numpy(items),
                    self.model.ITEM_SEQ_LEN: torch.from_numpy(lengths)})).numpy()
            scores[:, 0] = -np.inf  # [PAD]
            for row, n in enumerate(batch):
                scores[row, self._columns(excludes[n])] = -np.inf
            top = top_k_columns(scores, k)
            for row, n in enumerate(batch):
                best = top[row][np.isfinite(scores[row, top[row]])]
                answers[n] = self.by_column[best]
        for n in range(len(user_ids)):
            if answers[n] is None:
                answers[n] = self.popularity.recommend(None, [excludes[n]], k)[0]
        return answers

    def send(self, events: Interactions) -> None:
        self.recent.add(events)

    def learn(self, events: Interactions) -> None:
        self.popularity.learn(events)  # the fallback only: SASRec itself is trained once
