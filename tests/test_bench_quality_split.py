"""bench.quality --protocol split on a tiny synthetic log: the table, and who makes the ratio."""

from __future__ import annotations

import re

import bench.quality
from exporter.data import write_dataset
from exporter.synthetic import generate_synthetic


def test_the_split_prints_each_scorer_and_how_many_users_make_the_ratio(tmp_path, capsys):
    ratings = write_dataset(generate_synthetic(n_users=150, n_items=80, n_events=4000, seed=4,
                                               progress=False), tmp_path / "tiny")
    assert bench.quality.main(["--protocol", "split", "--data", str(ratings), "--no-search"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("|") and not line.startswith("|--")}
    for scorer in ("model", "history only", "popularity", "ALS", "BPR", "item-kNN", "EASE"):
        assert scorer in rows, scorer
    users = int(rows["model"].split("|")[6])
    (line,) = [line for line in out.splitlines() if line.startswith("base model vs the best peer")]
    counts = re.findall(r"users ahead / behind / level (\d+) / (\d+) / (\d+), any one user left "
                        r"out x(\d+\.\d+)-(\d+\.\d+)", line)
    assert len(counts) == 2  # recall@10, then NDCG@10
    for ahead, behind, level, low, high in counts:
        assert int(ahead) + int(behind) + int(level) == users
        assert float(low) <= float(high)
