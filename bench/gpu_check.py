"""The GPU check (issue 27): everything that needs a CUDA device, in one run of at most 8 minutes.

    make gpu-check                         # = python3 -m bench.gpu_check
    python3 -m bench.gpu_check --log-dir $OUT --budget-s 480

Steps, each in a child process of its own with its own timeout (a hang is killed, the run goes
on), all within one budget (default 480 s):

  probe                  python, torch, triton, the device, onnxruntime, tensorrt: what is here
  kernel-tests           tests/kernels -m gpu, compiled (TRITON_INTERPRET unset) on the device
  bench-kernels          score_topk on N=1e7, d=128 fp16 items, B=1..256, against torch mm+topk
  tensorrt-user_tower    TensorRT plans of both tower kinds, run against the torch tower
  tensorrt-text_encoder  TensorRT plan of MiniLM, run against torch on the same token ids

and one table at the end: step, PASS / FAIL / NOT RUN (with the reason: a missing device or
package, or the budget spent), seconds, details and key numbers. A step whose needs the probe did
not find is NOT RUN, never PASS. Exit status 1 when a step failed, else 0 (NOT RUN rows are
listed in the last line). Run from the repository root with any python that has torch: the
project need not be installed (see docs/gpu-check.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.report import format_table, machine_header

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
# The limit for the whole check: it has to fit a 15-minute device lease with the start.
DEFAULT_BUDGET_S = 480.0
DEFAULT_LOG_DIR = Path("var/gpu-check")
TABLE_FILE = "table.md"
# A step given less than this would only time out: it is NOT RUN instead.
MIN_STEP_S = 10.0
# SIGTERM first so pytest and torch can flush their logs; then SIGKILL.
KILL_GRACE_S = 5.0
LOG_TAIL_CHARS = 600
TABLE_HEADERS = ["step", "result", "s", "details"]


class StepNotRun(Exception):
    """Raised by a step that finds it cannot run here; the message is the reason."""


@dataclass(frozen=True)
class Outcome:
    """What one step found. ``numbers``: (label, text) rows under the step's row in the table.
    ``facts``: need -> "" where it is met, else why not (the probe's findings, which gate the
    ``needs`` of later steps)."""

    status: str
    details: str
    numbers: tuple[tuple[str, str], ...] = ()
    facts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in (PASS, FAIL, NOT_RUN):
            raise ValueError(f"status must be {PASS}, {FAIL} or {NOT_RUN}, not {self.status!r}")


@dataclass(frozen=True)
class Step:
    """``target``: "module:function" returning an :class:`Outcome`, called in a child process
    started from the repository root. ``needs``: facts an earlier step must have found met."""

    name: str
    target: str
    timeout_s: float
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if ":" not in self.target:
            raise ValueError(f"target must be 'module:function', not {self.target!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}")


@dataclass(frozen=True)
class StepReport:
    step: Step
    outcome: Outcome
    seconds: float


# Per-step limits from what each does (the device runs have not been timed yet: issue 27 asks the
# first session lent a GPU to run this and record the times); their sum is above the budget on
# purpose, so a fast step leaves its time to the later ones.
STEPS = (
    Step("probe", "bench.gpu_steps:probe", 60),
    Step("kernel-tests", "bench.gpu_steps:kernel_tests", 200, needs=("cuda", "pytest")),
    Step("bench-kernels", "bench.gpu_steps:bench_kernels", 120, needs=("cuda",)),
    Step("tensorrt-user_tower", "bench.gpu_steps:tensorrt_user_tower", 90,
         needs=("cuda", "tensorrt")),
    Step("tensorrt-text_encoder", "bench.gpu_steps:tensorrt_text_encoder", 150,
         needs=("cuda", "tensorrt", "minilm")),
)


def _unmet(step: Step, facts: dict[str, str]) -> str | None:
    """Why ``step`` cannot run given the facts found so far, or None where it can."""
    for need in step.needs:
        if need not in facts:
            return f"nothing checked whether '{need}' is here (the probe failed or did not run)"
        if facts[need]:
            return facts[need]
    return None


def _child_env() -> dict[str, str]:
    """The caller's environment without TRITON_INTERPRET (the kernels must run compiled) and
    with the repository first on the path (the project need not be installed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(process: subprocess.Popen) -> None:
    """End the child's whole process group (pytest's own children too)."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace").strip() if log_path.exists() else ""
    return " ".join(text[-LOG_TAIL_CHARS:].split())


def run_step(step: Step, *, timeout_s: float, log_path: Path, cut_by_budget: bool) -> Outcome:
    """Run ``step`` in a child process (its output to ``log_path``) for at most ``timeout_s``."""
    with tempfile.TemporaryDirectory() as scratch, open(log_path, "wb") as out:
        result = Path(scratch) / "outcome.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.gpu_check", "--run-step", step.target,
             "--result", str(result)],
            cwd=REPO_ROOT, env=_child_env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            why = ("the check's budget ran out" if cut_by_budget
                   else f"its limit is {step.timeout_s:.0f} s")
            return Outcome(FAIL, f"timed out after {timeout_s:.0f} s ({why}); log: {log_path}")
        if result.exists():
            return Outcome(**_outcome_fields(json.loads(result.read_text())))
    return Outcome(FAIL, f"the step's process exited with status {code} and no result: "
                         f"...{_tail(log_path)}")


def _outcome_fields(raw: dict) -> dict:
    raw["numbers"] = tuple(tuple(pair) for pair in raw.get("numbers", ()))
    return raw


def run_check(steps: Sequence[Step], *, budget_s: float, log_dir: Path) -> list[StepReport]:
    """Run ``steps`` in order within ``budget_s`` seconds; a step whose needs are unmet, or that
    would get less than MIN_STEP_S of the budget, is NOT RUN with the reason."""
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    facts: dict[str, str] = {}
    reports = []
    for step in steps:
        start = time.monotonic()
        left = deadline - start
        unmet = _unmet(step, facts)
        if unmet is not None:
            outcome = Outcome(NOT_RUN, unmet)
        elif left < MIN_STEP_S:
            outcome = Outcome(NOT_RUN, f"the check's budget of {budget_s:.0f} s was spent "
                                       "before this step")
        else:
            timeout_s = min(step.timeout_s, left)
            log.info("%s: running (limit %.0f s)", step.name, timeout_s)
            outcome = run_step(step, timeout_s=timeout_s, log_path=log_dir / f"{step.name}.log",
                               cut_by_budget=timeout_s < step.timeout_s)
        facts.update(outcome.facts)
        log.info("%s: %s (%.1f s) %s", step.name, outcome.status, time.monotonic() - start,
                 outcome.details)
        reports.append(StepReport(step, outcome, time.monotonic() - start))
    return reports


def format_report(reports: Sequence[StepReport]) -> str:
    """The one table: a row per step, then its key numbers as indented rows; a summary line."""
    rows = []
    for report in reports:
        outcome = report.outcome
        rows.append([report.step.name, outcome.status, f"{report.seconds:.1f}", outcome.details])
        rows += [[f"  {label}", "", "", text] for label, text in outcome.numbers]
    counts = {s: sum(r.outcome.status == s for r in reports) for s in (PASS, FAIL, NOT_RUN)}
    summary = (f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[NOT_RUN]} not run"
               + (": " + ", ".join(r.step.name for r in reports if r.outcome.status == NOT_RUN)
                  if counts[NOT_RUN] else ""))
    return format_table(TABLE_HEADERS, rows) + "\n\n" + summary


def exit_status(reports: Sequence[StepReport]) -> int:
    return 1 if any(r.outcome.status == FAIL for r in reports) else 0


def _run_in_child(target: str, result: Path) -> int:
    """The child's side: call ``target``, write its Outcome as JSON (exceptions become FAIL or,
    for StepNotRun, NOT RUN; the traceback goes to the step's log)."""
    module, _, function = target.partition(":")
    try:
        outcome = getattr(importlib.import_module(module), function)()
    except StepNotRun as exc:
        outcome = Outcome(NOT_RUN, str(exc))
    except Exception as exc:  # a failing step is a table row, not a crash of the check
        traceback.print_exc()
        outcome = Outcome(FAIL, f"{type(exc).__name__}: {exc}")
    result.write_text(json.dumps(asdict(outcome)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for all steps together (default %(default)s)")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR,
                        help="each step's log and table.md go here (default %(default)s)")
    parser.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS],
                        help="run only these (the probe always runs first: it gates the rest)")
    parser.add_argument("--run-step", help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_step:
        return _run_in_child(args.run_step, args.result)
    chosen = [s for s in STEPS if s.name == "probe" or not args.steps or s.name in args.steps]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    print(machine_header([f"gpu check: {len(chosen)} steps, budget {args.budget_s:.0f} s, "
                          f"logs in {args.log_dir}"]), flush=True)
    reports = run_check(chosen, budget_s=args.budget_s, log_dir=args.log_dir)
    table = format_report(reports)
    (args.log_dir / TABLE_FILE).write_text(table + "\n")
    print()
    print(table)
    return exit_status(reports)


if __name__ == "__main__":
    # Run the imported module, not __main__: the steps raise bench.gpu_check.StepNotRun, which a
    # second copy of this module (as __main__) would not catch as its own class.
    from bench.gpu_check import main as imported_main

    sys.exit(imported_main())
