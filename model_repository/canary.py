"""A canary: a pushed base served to a stable, hash-chosen share of users beside the serving one.

    <repository>/retrieve/canary.json   {"salt", "share", "first_version", "started_at",
                                         "started_offset", "auto"} (the last two the updater's,
                                         for resuming after a restart)
                                        written by the updater (one atomic rename), read by
                                        retrieve's version watcher; gone when the canary ends

A user is in the canary when ``splitmix64(user_id ^ salt) / 2**64 < share``: the same answer in
retrieve and in the updater, for the canary's whole run (no user switches arms mid-session), and
independent between canaries (each its own salt). A request with no user id is the control's.

The two arms are two lineages of retrieve versions in one numbered folder: a canary version's
meta says ``"arm": "canary"`` (``first_version`` and newer); every other version is the
control's. Retrieve answers each request from the newest version of its user's arm, and its
ARM output names the arm (VERSION the version).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CANARY_FILE = "canary.json"
ARM_KEY = "arm"  # in a retrieve version's meta
CONTROL, CANARY = "control", "canary"
ARM_CODES = {CONTROL: 0, CANARY: 1}  # the ARM output's values
_MASK = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser over uint64 (wrapping arithmetic, as numpy's arrays do)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class CanarySplit:
    salt: int            # 0 .. 2**64 - 1
    share: float         # of users, (0, 1)
    first_version: int   # the canary lineage's first retrieve version
    started_at: float    # Unix seconds
    # the updater's, so that a restarted updater resumes the canary (retrieve reads neither)
    started_offset: int = 0  # the feedback log offset it started from
    auto: bool = False       # the updater decides it (--auto)

    def __post_init__(self):
        if not 0 < self.share < 1:
            raise ValueError(f"share must be in (0, 1), got {self.share!r}")

    @classmethod
    def new(cls, share: float, *, first_version: int, started_at: float,
            started_offset: int = 0, auto: bool = False) -> CanarySplit:
        return cls(secrets.randbits(64), float(share), int(first_version), float(started_at),
                   int(started_offset), bool(auto))

    def in_canary(self, user_ids) -> np.ndarray:
        """(N,) bool: which of these users the canary serves."""
        ids = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
        hashed = _splitmix64(ids ^ np.uint64(self.salt & _MASK))
        return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53) < self.share


def arm_of(meta: dict) -> str:
    """A retrieve version's arm, from its meta."""
    return CANARY if meta.get(ARM_KEY) == CANARY else CONTROL


def read_split(model_dir: Path) -> CanarySplit | None:
    """The running canary of a retrieve folder, or None (none, or a file this cannot read)."""
    try:
        raw = json.loads((Path(model_dir) / CANARY_FILE).read_text())
        return CanarySplit(int(raw["salt"]), float(raw["share"]), int(raw["first_version"]),
                           float(raw["started_at"]), int(raw.get("started_offset", 0)),
                           bool(raw.get("auto", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_split(model_dir: Path, split: CanarySplit) -> None:
    """Start (or restate) the canary: one fsynced rename, which also moves the folder's mtime
    that retrieve's watcher polls."""
    path = Path(model_dir) / CANARY_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(split), f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def remove_split(model_dir: Path) -> None:
    """End the canary (its versions stay on disk until garbage-collected)."""
    try:
        (Path(model_dir) / CANARY_FILE).unlink()
    except FileNotFoundError:
        pass
