"""bench.gpu_check on a CPU host: the step runner and its table with fake steps (pass, fail, hang,
not run), and the real check, which must say NOT RUN with the reason for every GPU step."""

from __future__ import annotations

import time

import pytest

from bench import gpu_check
from bench.gpu_check import FAIL, NOT_RUN, PASS, Outcome, Step, StepNotRun, run_check

HERE = "tests.test_gpu_check"
HANG_LIMIT_S = 2


# The fake steps: called by name in a child process, like bench.gpu_steps' functions.
def passes() -> Outcome:
    return Outcome(PASS, "all good", (("B=1", "ours 1.0 ms, torch 2.0 ms"),))


def raises() -> Outcome:
    raise AssertionError("scores differ by 0.5")


def hangs() -> Outcome:
    time.sleep(120)
    return Outcome(PASS, "unreachable")


def declines() -> Outcome:
    raise StepNotRun("the widget package is not installed")


def finds_no_device() -> Outcome:
    return Outcome(PASS, "cuda: no", facts={"cuda": "no CUDA device (fake probe)", "cpu": ""})


def _rows(table: str) -> dict[str, list[str]]:
    """step name -> its cells (result, s, details), from the markdown table."""
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, *cells = (c.strip() for c in line.strip("|").split("|"))
        rows[name] = cells
    return rows


def test_each_outcome_gets_its_row_and_a_hang_is_killed_at_its_limit(tmp_path):
    steps = [
        Step("probe", f"{HERE}:finds_no_device", 60),
        Step("good", f"{HERE}:passes", 60, needs=("cpu",)),
        Step("bad", f"{HERE}:raises", 60),
        Step("stuck", f"{HERE}:hangs", HANG_LIMIT_S),
        Step("declined", f"{HERE}:declines", 60),
        Step("gpu-only", f"{HERE}:passes", 60, needs=("cuda",)),
        Step("unprobed", f"{HERE}:passes", 60, needs=("tensorrt",)),
    ]
    start = time.monotonic()
    reports = run_check(steps, budget_s=120, log_dir=tmp_path)
    assert time.monotonic() - start < 60, "the hanging step was not killed at its limit"
    rows = _rows(gpu_check.format_report(reports))
    assert rows["probe"][0] == PASS and rows["good"][0] == PASS
    assert rows["B=1"] == ["", "", "ours 1.0 ms, torch 2.0 ms"]  # the step's numbers, below it
    assert rows["bad"][0] == FAIL and rows["bad"][2] == "AssertionError: scores differ by 0.5"
    assert "scores differ by 0.5" in (tmp_path / "bad.log").read_text()  # the traceback
    assert rows["stuck"][0] == FAIL
    assert rows["stuck"][2].startswith(f"timed out after {HANG_LIMIT_S} s (its limit is")
    assert rows["declined"][0] == NOT_RUN
    assert rows["declined"][2] == "the widget package is not installed"
    assert rows["gpu-only"][0] == NOT_RUN and rows["gpu-only"][2] == "no CUDA device (fake probe)"
    assert rows["unprobed"][0] == NOT_RUN and "'tensorrt'" in rows["unprobed"][2]
    assert gpu_check.exit_status(reports) == 1
    assert gpu_check.format_report(reports).endswith(
        "2 passed, 2 failed, 3 not run: declined, gpu-only, unprobed")


def test_steps_the_budget_cannot_fit_are_cut_then_not_run(tmp_path):
    steps = [Step("stuck", f"{HERE}:hangs", 60), Step("later", f"{HERE}:passes", 60)]
    reports = run_check(steps, budget_s=gpu_check.MIN_STEP_S + 1, log_dir=tmp_path)
    stuck, later = (r.outcome for r in reports)
    assert stuck.status == FAIL and "the check's budget ran out" in stuck.details
    assert later.status == NOT_RUN and "budget of 11 s was spent" in later.details


def test_a_step_that_dies_without_a_result_fails_with_its_output(tmp_path):
    reports = run_check([Step("typo", f"{HERE}:no_such_step", 60)], budget_s=60, log_dir=tmp_path)
    assert reports[0].outcome.status == FAIL
    assert "AttributeError" in reports[0].outcome.details


def test_outcome_and_step_reject_what_the_table_cannot_show():
    with pytest.raises(ValueError, match="status must be PASS, FAIL or NOT RUN, not 'SKIP'"):
        Outcome("SKIP", "")
    with pytest.raises(ValueError, match="target must be 'module:function'"):
        Step("x", "bench.gpu_steps.probe", 10)


def test_the_real_check_without_a_device_runs_only_the_probe_and_says_why(tmp_path, monkeypatch,
                                                                          capsys):
    # hidden on every host, so a CUDA host takes this path too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_check.main(["--log-dir", str(tmp_path)]) == 0
    table = (tmp_path / gpu_check.TABLE_FILE).read_text()
    assert table in capsys.readouterr().out
    rows = _rows(table)
    assert rows["probe"][0] == PASS and "cuda: no" in rows["probe"][2]
    assert rows["torch"][2]  # the probe's versions, under its row
    for name in ("kernel-tests", "bench-kernels", "tensorrt-user_tower", "tensorrt-text_encoder"):
        assert rows[name][0] == NOT_RUN, name
        assert rows[name][2].startswith("no CUDA device: torch "), name
    assert table.rstrip().endswith("1 passed, 0 failed, 4 not run: kernel-tests, bench-kernels, "
                                   "tensorrt-user_tower, tensorrt-text_encoder")
