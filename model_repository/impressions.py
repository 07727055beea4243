"""Impressions: what retrieve answered whom, recorded as it answers (issue 28).

    <repository>/retrieve/impressions/            made by the updater when it starts and
                                                  removed when it stops; retrieve records while
                                                  it exists (checked each CHECK_DIR_S)
        <start ns>-<pid>.imp                      one file per retrieve instance at a time,
                                                  appended one write a batch, fixed-size records

A record (RECORD, 104 bytes, little-endian) is one answer to a request naming a user: when
(Unix s), the user, the retrieve version and arm (model_repository.canary's ARM_CODES) that
answered, how many items it held, and its first TOP item ids (-1 past them). Every such answer
is recorded, not a sample: a batch costs one `os.write` (bench.e2e measures it per request).
Text searches with no user id are not impressions.

The writer starts a new file every ROTATE_S or MAX_FILE_BYTES, so a file not modified for
2 x ROTATE_S is finished; the reader (the updater) deletes finished files once it has read them
to the end. The updater attributes its users' later positive events to these answers
(updater.exposure).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMPRESSIONS_DIR = "impressions"
SUFFIX = ".imp"
TOP = 10  # items kept per impression: the hit rate's K (updater.quality.K)
RECORD = np.dtype([("time", "<f8"), ("user", "<i8"), ("version", "<i4"), ("arm", "<i2"),
                   ("count", "<i2"), ("items", "<i8", (TOP,))])
ROTATE_S = 300.0
MAX_FILE_BYTES = 32 << 20
CHECK_DIR_S = 1.0  # how often the writer looks whether recording is on


def impressions_dir(model_dir: Path) -> Path:
    """Where a retrieve model folder's impressions live."""
    return Path(model_dir) / IMPRESSIONS_DIR


def records(times, users, versions, arms, item_lists) -> np.ndarray:
    """RECORD rows from per-answer columns (``item_lists``: each answer's item ids, best first)."""
    out = np.zeros(len(users), RECORD)
    out["time"], out["user"], out["version"], out["arm"] = times, users, versions, arms
    out["items"] = -1
    for row, items in zip(out, item_lists):
        top = np.asarray(items, np.int64).reshape(-1)[:TOP]
        row["count"] = top.size
        row["items"][:top.size] = top
    return out


class ImpressionWriter:
    """Retrieve's side: `write` appends a batch's answers while recording is on."""

    def __init__(self, model_dir: Path):
        self.dir = impressions_dir(model_dir)
        self._fd: int | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._on = False
        self._checked_at = -CHECK_DIR_S

    def _recording(self, now: float) -> bool:
        if now - self._checked_at >= CHECK_DIR_S:
            self._checked_at = now
            self._on = self.dir.is_dir()
            if not self._on or self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                self.close()  # off, or its file removed (the updater stopped and started)
        return self._on

    def write(self, rows: np.ndarray) -> int:
        """Append ``rows`` (RECORD); returns the bytes written (0: recording is off)."""
        if not rows.size or not self._recording(time.monotonic()):
            return 0
        now = time.time()
        if (self._fd is not None
                and (now - self._opened_at >= ROTATE_S or self._bytes >= MAX_FILE_BYTES)):
            self.close()
        try:
            if self._fd is None:
                path = self.dir / f"{time.time_ns()}-{os.getpid()}{SUFFIX}"
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._opened_at, self._bytes = now, 0
            data = rows.tobytes()
            os.write(self._fd, data)
        except OSError as exc:  # the updater removed the folder, or the disk is full: no answer fails
            log.warning("impressions not recorded: %s", exc)
            self.close()
            return 0
        self._bytes += len(data)
        return len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class ImpressionReader:
    """The updater's side: `read_new` returns the records appended since its last call, from
    every writer's files; finished files read to the end are deleted. Files there when it
    starts are read from their end (what was answered before it started attributes nothing)."""

    model_dir: Path
    _positions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.dir = impressions_dir(self.model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob(f"*{SUFFIX}"):
            self._positions[path.name] = _whole_records(path.stat().st_size)

    def read_new(self) -> np.ndarray:
        chunks = []
        now = time.time()
        try:
            paths = sorted(self.dir.glob(f"*{SUFFIX}"))
        except OSError:
            return np.zeros(0, RECORD)
        seen = set()
        for path in paths:
            seen.add(path.name)
            position = self._positions.get(path.name, 0)
            try:
                stat = path.stat()
                end = position + _whole_records(stat.st_size - position)
                if end > position:
                    with open(path, "rb") as f:
                        f.seek(position)
                        chunks.append(np.frombuffer(f.read(end - position), RECORD))
                self._positions[path.name] = end
                if end == stat.st_size and now - stat.st_mtime > 2 * ROTATE_S:
                    path.unlink()  # finished, and read to the end
                    del self._positions[path.name]
            except FileNotFoundError:
                self._positions.pop(path.name, None)
        for gone in set(self._positions) - seen:
            del self._positions[gone]
        return np.concatenate(chunks) if chunks else np.zeros(0, RECORD)

    def remove(self) -> None:
        """Recording off: the folder and its files go (retrieve stops within CHECK_DIR_S)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._positions.clear()


def wait_recording(model_dir: Path, ask, *, timeout_s: float = 60.0) -> None:
    """Call ``ask()`` (one request naming a user) until retrieve has recorded an answer: from
    then on every answer is (retrieve looks for the folder each CHECK_DIR_S). TimeoutError
    after ``timeout_s``."""
    folder = impressions_dir(model_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        ask()
        if any(f.stat().st_size for f in folder.glob(f"*{SUFFIX}")):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"retrieve recorded no impression in {folder} in {timeout_s:g} s "
                               "(is the updater running?)")
        time.sleep(CHECK_DIR_S / 5)


def _whole_records(size: int) -> int:
    """The bytes of ``size`` that hold whole records (a writer may be mid-write)."""
    return size - size % RECORD.itemsize
