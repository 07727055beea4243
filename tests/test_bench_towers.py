"""bench.towers on a tiny synthetic set: one table, both towers on one split, popularity once."""

from __future__ import annotations

import math
from dataclasses import replace

from bench.towers import METRICS, compare, main
from exporter.data import write_dataset
from exporter.synthetic import generate_synthetic
from exporter.train import METHOD_EASE, TrainConfig
from model_repository import retrieve_schema as schema

TINY = dict(n_users=120, n_items=60, n_events=3000, seed=4, progress=False)
TINY_CONFIG = TrainConfig(dim=8, epochs=1, batch_size=512, negatives=32, seq_blocks=1, seed=1)


def test_compare_gives_each_tower_its_rows_on_the_same_users():
    rows = compare(generate_synthetic(**TINY), name="tiny", search=False, budget_s=0.0,
                   base=TINY_CONFIG)
    labels = [row[1] for row in rows]
    assert labels == [label for kind in schema.TOWER_KINDS
                      for label in (kind, f"{kind}, history only")] + ["popularity"]
    assert {row[0] for row in rows} == {"tiny"}
    assert len({row[1 + len(METRICS) + 1] for row in rows}) == 1  # users: one split for all
    for row in rows:
        assert all(0.0 <= value <= 1.0 for value in row[2:2 + len(METRICS)]), row
    for kind_row in rows[0:-1:2]:  # each tower trained as told, no prior without a search
        assert kind_row[-2] > 0 and kind_row[-1] == "dim 8, epochs 1, lr 0.005, prior 0"
    assert math.isnan(rows[-1][-2]) and rows[-1][-1] == ""


def test_a_closed_form_tower_is_named_as_one(monkeypatch):
    import bench.towers

    monkeypatch.setattr(bench.towers.schema, "TOWER_KINDS", (schema.TOWER_POOLED,))
    rows = compare(generate_synthetic(**TINY), name="tiny", search=False, budget_s=0.0,
                   base=replace(TINY_CONFIG, method=METHOD_EASE, ease_l2=50.0))
    assert rows[0][1] == schema.TOWER_POOLED and rows[0][-1] == "closed form, rank 8, l2 50, prior 0"


def test_main_prints_a_table_per_log(tmp_path, capsys, monkeypatch):
    import bench.towers

    # --no-search trains TrainConfig's defaults; shrink them to keep the test fast
    monkeypatch.setattr(bench.towers, "TrainConfig", lambda: TINY_CONFIG)
    ratings = write_dataset(generate_synthetic(**TINY), tmp_path / "tiny")
    assert main(["--no-search", "--data", str(ratings), "--data", str(ratings.parent)]) == 0
    out = capsys.readouterr().out
    assert "settings: TrainConfig defaults" in out
    assert out.count("tower | recall@10 | ndcg@10 |") == 2 and out.count("popularity |") == 2
    assert "| tiny/ratings.csv |" in out and "| tiny |" in out  # a file, then its folder
