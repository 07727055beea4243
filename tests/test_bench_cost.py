"""bench.cost: CPU read off real processes, and the arithmetic from CPU to money."""

import subprocess
import sys

import numpy as np
import pytest

from bench.cost import Cost, als_cost, faiss_cost, tree_cpu_s


def test_a_cost_per_1000_and_per_million():
    cost = Cost("x", cpu_s=3.6, count=1800)
    assert cost.per_1000_s == pytest.approx(2.0)
    assert cost.per_million(price=0.04) == pytest.approx(2.0 * 1000 / 3600 * 0.04)
    assert cost.row(price=0.04)[1:] == [1800, "2.000", "0.0222"]


def test_tree_cpu_counts_a_busy_child():
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "'import time\\nt = time.process_time()\\n"
                               "while time.process_time() - t < 0.6: pass\\n"
                               "time.sleep(30)'])"])
    try:
        busy = 0.0
        for _ in range(100):  # the grandchild burns 0.6 s of CPU, then sleeps
            busy = tree_cpu_s(parent.pid)
            if busy >= 0.5:
                break
            subprocess.run(["sleep", "0.05"])
        assert busy >= 0.5
    finally:
        import psutil
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_the_peers_report_cpu_per_query_and_per_refit():
    rows = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    faiss = faiss_cost(rows, 5, 16, queries=64)
    assert faiss.count == 64 and faiss.cpu_s >= 0 and "batch 16" in faiss.what
    als = als_cost(50, 200, events=2_000, every=100)
    assert als.count == 100 and als.cpu_s > 0
