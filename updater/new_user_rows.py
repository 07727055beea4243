"""A new user's row, chosen per deployment from its own traffic (issue 33).

A user the build did not fit (new since) is served from their history. Whether a row made from
that history helps too differs by log: on the synthetic log, whose users' tastes hold still, a
row along the mean of their items' rows lifts new users' recall towards full retraining's; on
ml-latest-small 2018, whose new users act in long bursts, the same row drowns the session they
move on with. So the updater measures it on its own traffic. The row of a user the build did
not fit is

    a * r * unit(mean of their stored history's item rows)

(r the median length of the build's fitted rows; for the closed form, whose user rows are
unit(x_u Q), exactly that fit's direction), and ``a`` is one of CANDIDATES. Before the trainer
learns a new user's positive event, each candidate's query is scored as serving scores it (the
item rows, the popularity prior at the user's session weight, the user's history excluded) and
whether the event's item makes its top K is counted: full information, each candidate judged on
the same events. The served ``a`` starts at 0 (history alone, what a build serves) and moves to
another candidate only when it wins a sign test against the current one on the events where
exactly one of the two hit (wins - losses > Z * sqrt(wins + losses)); the counts decay with a
half-life of HALF_LIFE checked events, so the choice follows the traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from updater.settings import NEW_USER_ROWS

CANDIDATES = tuple(float(mode) for mode in NEW_USER_ROWS if mode != "auto")
K = 10  # the top K a check counts (updater.quality's)
Z = 2.0  # the sign test's threshold (about 98 % one-sided)
MIN_DISCORDANT = 10.0  # events where exactly one of the two hit, before any switch
HALF_LIFE = 2000.0  # checked events
CHECKS_PER_BATCH = 32  # new users' positive events checked per trained batch, evenly spaced


def candidates_of(mode: str) -> tuple[float, ...]:
    """TrainerConfig.new_user_rows: "auto" (every candidate), or one fixed ("0": no row)."""
    return CANDIDATES if mode == "auto" else (float(mode),)


@dataclass
class NewUserRowChoice:
    """Which candidate scale serves, and the decayed evidence for each."""

    candidates: tuple[float, ...]
    current: int = 0  # index into candidates
    hits: np.ndarray = field(default=None)  # type: ignore[assignment]  # (C,) decayed
    discordant: np.ndarray = field(default=None)  # type: ignore[assignment]  # (C, C) decayed
    checked: int = 0  # events checked since the trainer started
    switches: int = 0

    def __post_init__(self):
        n = len(self.candidates)
        self.hits = np.zeros(n) if self.hits is None else self.hits
        self.discordant = np.zeros((n, n)) if self.discordant is None else self.discordant

    @classmethod
    def of(cls, mode: str, *, scale: float) -> NewUserRowChoice:
        """``scale``: the one the version serves (its ``new_user_row_scale``); in auto mode the
        nearest candidate, fixed modes take theirs."""
        candidates = candidates_of(mode)
        current = int(np.argmin([abs(a - scale) for a in candidates]))
        return cls(candidates=candidates, current=current)

    @property
    def scale(self) -> float:
        return self.candidates[self.current]

    @property
    def deciding(self) -> bool:
        return len(self.candidates) > 1

    def observe(self, hit: np.ndarray) -> bool:
        """One checked event's hits, (C,) bool, candidate by candidate. True when the served
        candidate changed."""
        keep = 0.5 ** (1.0 / HALF_LIFE)
        hit = np.asarray(hit, bool)
        self.hits = self.hits * keep + hit
        self.discordant = self.discordant * keep + (hit[:, None] != hit[None, :])
        self.checked += 1
        best = int(np.argmax(self.hits))
        c = self.current
        margin = self.hits[best] - self.hits[c]  # wins - losses of best against the current
        pairs = self.discordant[best, c]
        if best != c and pairs >= MIN_DISCORDANT and margin > Z * math.sqrt(pairs):
            self.current = best
            self.switches += 1
            return True
        return False

    def status(self) -> dict:
        """What `freshrec status` shows."""
        return {"scale": self.scale, "candidates": list(self.candidates), "checked": self.checked,
                "hits": [round(float(h), 2) for h in self.hits], "switches": self.switches}


def rows_from_histories(item_rows: np.ndarray, histories: np.ndarray, *, scale: float,
                        length: float) -> np.ndarray:
    """(U, d) float32: ``scale * length * unit(mean item row)`` of each history ((U, H) item
    rows, -1 empty); zero for an empty history or a zero mean."""
    mask = histories >= 0
    sums = np.einsum("uh,uhd->ud", mask.astype(np.float32),
                     item_rows[np.maximum(histories, 0)], dtype=np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    unit = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    return (scale * length * unit).astype(np.float32)
