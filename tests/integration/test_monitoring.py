"""Monitoring (issue 29): the shipped alert rules under promtool, and a real Prometheus scraping a
real `freshrec serve` (the updater's metrics and Triton's) and answering queries about them.

promtool and prometheus are Debian's `prometheus` package, which `make test` installs; a missing
binary is a failure naming it, never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from clients import Client, UpdaterClient
from freshrec.child_process import free_port
from model_repository import contract as c
from model_repository import versions
from tests.fixtures.builds import UPDATER

pytestmark = pytest.mark.integration
MONITORING = Path(__file__).resolve().parents[2] / "freshrec" / "monitoring"
FRESHREC = [sys.executable, "-m", "freshrec.cli"]
WAIT_S = 90.0


def _binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} not found: install Debian's prometheus package (make test does)"
    return found


def test_the_alert_rules_are_valid_and_fire_as_their_unit_tests_say():
    promtool = _binary("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(MONITORING / "alerts.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _until(prometheus: str, expr: str) -> list:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            result = _query(prometheus, expr)
        except OSError:
            result = []
        if result:
            return result
        assert time.monotonic() < deadline, f"Prometheus never answered {expr}"
        time.sleep(0.5)


def test_a_real_prometheus_scrapes_a_real_freshrec_serve(builds, tmp_path):
    prometheus_bin = _binary("prometheus")
    repository = builds.copy(UPDATER, tmp_path)
    grpc_port, http_port, metrics_port, updater_port, updater_metrics, web = (
        free_port() for _ in range(6))
    serve = subprocess.Popen(
        FRESHREC + ["serve", "--repository", str(repository), "--grpc-port", str(grpc_port),
                    "--http-port", str(http_port), "--metrics-port", str(metrics_port),
                    "--updater-port", str(updater_port),
                    "--updater-metrics-port", str(updater_metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prometheus, prometheus_log = None, open(tmp_path / "prometheus.log", "w")
    try:
        line = serve.stdout.readline()
        assert "freshrec ready" in line, (line, serve.stderr.read() if serve.poll() else "")
        grpc_url, updater_url = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{updater_port}"
        with UpdaterClient(updater_url) as up, Client(grpc_url) as client:
            urls = up.status()["metrics_urls"]
            assert urls == {"updater": f"http://127.0.0.1:{updater_metrics}/metrics",
                            "triton": f"http://127.0.0.1:{metrics_port}/metrics"}
            _, tables = versions.load_tables(repository / c.RETRIEVE / "1")
            item = int(np.array(tables["item_ids"])[0])
            client.recommend(1, k=5)
            up.feedback(50_000_000 + uuid.uuid4().int % 1_000_000, item, "click")
            up.publish()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{MONITORING / 'alerts.yml'}']\n"
            "scrape_configs:\n"
            + "".join(f"  - job_name: {job}\n"
                      f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
                      for job, port in (("freshrec-updater", updater_metrics),
                                        ("triton", metrics_port))))
        prometheus = subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=prometheus_log)
        url = f"http://127.0.0.1:{web}"
        up_ = _until(url, 'up{job="freshrec-updater"} == 1')
        assert up_[0]["metric"]["job"] == "freshrec-updater"
        clicks = _until(url, 'freshrec_feedback_events_total{kind="click",outcome="accepted"} >= 1')
        assert float(clicks[0]["value"][1]) >= 1
        served = _until(url, 'freshrec_serving_version{model="retrieve"} >= 2')
        assert float(served[0]["value"][1]) >= 2  # the publish above
        assert _until(url, "freshrec_publish_phase_seconds_count >= 1")
        triton = _until(url, 'nv_inference_request_success{model="retrieve"} >= 1')
        assert triton[0]["metric"]["job"] == "triton"
        parts = _until(url, 'freshrec_retrieve_part_seconds_count{part="score_topk"} >= 1')
        assert parts[0]["metric"]["job"] == "triton"  # retrieve's own, beside Triton's
        # the shipped Grafana dashboard: every query is PromQL this Prometheus answers, and every
        # metric it names is one these processes export
        dashboard = json.loads((MONITORING / "dashboard.json").read_text())
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        exported = "".join(urllib.request.urlopen(u, timeout=10).read().decode()
                           for u in urls.values())
        for name in sorted(set(re.findall(r"\b((?:freshrec|nv)_[a-z_]+)", " ".join(exprs)))):
            assert re.search(rf"^{name}[{{ ]", exported, re.M), f"{name} is not exported"
        for expr in exprs:
            _query(url, expr)  # a bad query is status "error", which _query refuses
        assert _query(url, 'max by (model) (freshrec_serving_version)')
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=10) as reply:
            groups = json.loads(reply.read())["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {
            "FreshrecServedModelStale", "FreshrecUpdaterDown", "FreshrecTritonRestarted"}
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        prometheus_log.close()
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)
