"""The `freshrec` command as a user types it: serve, recommend, build errors."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from freshrec.child_process import free_port

pytestmark = pytest.mark.integration
FRESHREC = [sys.executable, "-m", "freshrec.cli"]


def _run(args, **kwargs):
    return subprocess.run(FRESHREC + args, capture_output=True, text=True, timeout=120, **kwargs)


def test_recommend_prints_ten_items_as_json(server, built):
    from model_repository import versions

    user = int(versions.load_tables(built.repository / "retrieve" / "1")[1]["user_ids"][0])
    done = _run(["recommend", "--user", str(user), "--url", server.grpc_url])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["user_id"] == user and answer["version"] == 1
    assert len(answer["items"]) == 10
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def test_recommend_error_is_one_line_and_nonzero(server):
    done = _run(["recommend", "--user", "1", "--k", "0", "--url", server.grpc_url])
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "K must be >= 1" in done.stderr


def test_serve_answers_then_stops_cleanly_on_ctrl_c(built, tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        FRESHREC + ["serve", "--repository", str(built.repository), "--grpc-port", ports[0],
                    "--http-port", ports[1], "--metrics-port", ports[2], "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "freshrec ready" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert f"127.0.0.1:{ports[0]}" in line
        done = _run(["recommend", "--user", "1", "--k", "3", "--url", f"127.0.0.1:{ports[0]}"])
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["items"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "freshrec stopped (tritonserver exit code 0)" in out


def test_build_rejects_a_malformed_ratings_file_naming_the_line(tmp_path):
    ratings = tmp_path / "u.data"
    ratings.write_text("1\t10\t4\t881250949\n2\t20\tfive\t881250950\n")
    done = _run(["build", "--data", str(ratings), "--out", str(tmp_path / "out"), "--quiet"])
    assert done.returncode == 1
    assert "u.data:2" in done.stderr and done.stderr.count("\n") == 1


def test_build_refuses_to_overwrite_without_force(built):
    out = Path(built.repository).parent
    done = _run(["build", "--synthetic", "--out", str(out), "--quiet"])
    assert done.returncode == 1 and "--force" in done.stderr
    assert (Path(built.repository) / "retrieve" / "1" / "manifest.json").is_file()
