"""A canary's arms and the rule that decides it (issue 28).

`freshrec push DIR --canary 10%` serves the pushed base to a stable hash-chosen share of users
(model_repository.canary) while the rest keep the serving lineage; each arm learns online from
its own users' events and publishes its own versions. Each arm is judged on what its users were
shown: retrieve records every answer as an impression, and the updater attributes each later
positive event of the user to the arm whose answer held the item (updater.exposure: hit@K
within a window, K at most 10). The arms' hit rates on their recomputed answers (the question
updater.quality asks of every positive event, whether or not its user was shown anything) are
in the status beside them (``control_asked``, ``canary_asked``) but decide nothing.

The decision (`decide`), checked after every batch once each arm has MIN_EVENTS exposed events:

    d = p_canary - p_control,  se = sqrt(p_c (1 - p_c) / n_c + p_t (1 - p_t) / n_t)
    roll back when d + Z se < 0                    (the canary is worse, beyond the noise)
    promote   when d - Z se > -MARGIN * p_control  (not worse by more than MARGIN, relative)

with Z = 3 at every look, a Haybittle-Peto boundary: a fixed z of 3 on each of many looks keeps
the chance of any wrong decision over a run near 1 % where a single look at z = 2 would allow
about 5 % per look. Nothing is decided before MIN_EVENTS per arm, and after MAX_EVENTS per arm
without a decision the canary stays for the operator (`freshrec canary --promote | --rollback`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model_repository.canary import ARM_CODES, CANARY, CONTROL, CanarySplit

Z = 3.0
MARGIN = 0.05  # relative: a canary within 5 % of the control's hit rate is "not worse"
MIN_EVENTS = 200  # exposed positive events per arm before any decision
MAX_EVENTS = 50_000  # per arm: past this, no automatic decision

PROMOTE, ROLL_BACK = "promote", "roll back"


@dataclass(frozen=True)
class ArmCount:
    events: int = 0  # positive events counted (exposed, or asked)
    hits: int = 0    # of them, the item in the arm's top K

    @property
    def rate(self) -> float:
        return self.hits / self.events if self.events else 0.0

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of the hit rate."""
        n = self.events
        if not n:
            return 0.0, 1.0
        p = self.rate
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def plus(self, events: int, hits: int) -> ArmCount:
        return ArmCount(self.events + events, self.hits + hits)


@dataclass(frozen=True)
class Decision:
    verdict: str | None  # PROMOTE, ROLL_BACK, or None: not yet
    reason: str


def decide(control: ArmCount, canary: ArmCount, *, z: float = Z, margin: float = MARGIN,
           min_events: int = MIN_EVENTS, max_events: int = MAX_EVENTS) -> Decision:
    """The sequential rule in the module docstring."""
    if min(control.events, canary.events) < min_events:
        return Decision(None, f"waiting for {min_events} exposed events in each arm "
                              f"(control {control.events}, canary {canary.events})")
    d = canary.rate - control.rate
    se = math.sqrt(canary.rate * (1 - canary.rate) / canary.events
                   + control.rate * (1 - control.rate) / control.events)
    said = (f"hit rate canary {canary.rate:.4f} ({canary.events} events), control "
            f"{control.rate:.4f} ({control.events}): difference {d:+.4f}, z {z:g} x se {se:.4f}")
    if d + z * se < 0:
        return Decision(ROLL_BACK, f"{said}: worse beyond the noise")
    if d - z * se > -margin * control.rate:
        return Decision(PROMOTE, f"{said}: not worse by more than {margin:.0%}")
    if min(control.events, canary.events) >= max_events:
        return Decision(None, f"{said}: undecided after {max_events} events per arm; the "
                              f"operator decides")
    return Decision(None, f"{said}: not decided yet")


@dataclass
class CanaryArm:
    """The running canary, as the updater keeps it: its split, its own trainer and quality meter
    (updater.trainer.SparseTrainer, updater.quality.QualityMeter), the log offset it started
    from, whether it decides itself, and the counts at its start of the control's meter and of
    the updater's exposure (updater.exposure: arm code -> ArmCount)."""

    split: CanarySplit
    trainer: object
    quality: object
    started_offset: int
    auto: bool
    control_from: tuple[int, int]  # the control's QualityMeter (asked, hits) at the start
    exposure_from: dict  # Exposure.counts at the start
    decision: Decision = Decision(None, "just started")
    skip_through: int = 0  # resumed after a restart: its version holds the events up to here

    def counts(self, exposure) -> tuple[ArmCount, ArmCount]:
        """(control, canary): each arm's exposed positive events and hits since the canary
        started, from the answers its users were shown (what the decision reads)."""
        def since(arm: int) -> ArmCount:
            now, then = exposure.count(arm), self.exposure_from.get(arm, ArmCount())
            return ArmCount(now.events - then.events, now.hits - then.hits)
        return since(ARM_CODES[CONTROL]), since(ARM_CODES[CANARY])

    def asked(self, control_quality) -> tuple[ArmCount, ArmCount]:
        """(control, canary): the same on each arm's recomputed answers (updater.quality's
        question, asked of every positive event whether or not its user was shown anything)."""
        return (ArmCount(control_quality.asked - self.control_from[0],
                         control_quality.hits - self.control_from[1]),
                ArmCount(self.quality.asked, self.quality.hits))

    def probe_user(self, user_ids, *, canary: bool) -> int:
        """A user of the arm asked for (one of ``user_ids`` if any is; else the smallest id of
        that arm, which retrieve answers as a user without history)."""
        ids = np.asarray(user_ids, np.int64)
        for pool in (ids, np.arange(1, 1 << 16, dtype=np.int64)):
            if pool.size:
                mine = pool[self.split.in_canary(pool) == canary]
                if mine.size:
                    return int(mine[0])
        raise RuntimeError("no user id of this arm found")  # share outside (0, 1): unreachable

    def status(self, control_quality, exposure) -> dict:
        def arm(count: ArmCount) -> dict:
            low, high = count.interval()
            return {"events": count.events, "hits": count.hits, "hit_rate": count.rate,
                    "low": low, "high": high}

        control, canary = self.counts(exposure)
        control_asked, canary_asked = self.asked(control_quality)
        return {"share": self.split.share, "first_version": self.split.first_version,
                "started_at": self.split.started_at, "started_offset": self.started_offset,
                "auto": self.auto, "control": arm(control), "canary": arm(canary),
                "control_asked": arm(control_asked), "canary_asked": arm(canary_asked),
                "decision": self.decision.verdict or "", "reason": self.decision.reason,
                "ended": ""}
