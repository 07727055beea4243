"""bench.quality --protocol split on a tiny synthetic log: the table, and who makes the ratio."""

from __future__ import annotations

import re

import pytest

import bench.quality
import bench.quality_split
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


def test_the_split_at_several_cuts_prints_a_line_per_cut_and_the_count(tmp_path, capsys):
    ratings = write_dataset(generate_synthetic(n_users=150, n_items=80, n_events=4000, seed=4,
                                               progress=False), tmp_path / "tiny")
    assert bench.quality.main(["--protocol", "split", "--data", str(ratings), "--no-search",
                               "--cuts", "0.7,0.8"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith("|") and not line.startswith("|--")]
    assert [cell.strip() for cell in rows[0][:3]] == ["cut", "users", "model recall@10"]
    body = rows[1:]
    assert [row[0].strip() for row in body] == ["0.7", "0.8"]
    met = 0
    for cut, row in zip((0.7, 0.8), body, strict=True):
        run = bench.quality_split.split_at(ratings, seed=0, search=False, train_fraction=cut)
        assert int(row[1]) == int(run.results["model"]["users"]) > 0
        cut_met = True
        for key, peer_cell in (("recall@10", row[3]), ("ndcg@10", row[6])):
            best = run.best_peer(key)
            assert peer_cell.strip().startswith(best)  # the best peer by that metric
            assert all(run.results[best][key] >= run.results[name][key] for name in run.peers)
            cut_met &= run.results["model"][key] >= run.results[best][key]
        met += cut_met
    (summary,) = [line for line in out.splitlines() if line.startswith("the model at least")]
    assert re.search(rf"at {met} of 2 cuts; median ratio recall@10 x\d+\.\d+, ndcg@10 x\d+\.\d+",
                     summary)
    # the cuts pooled: every user at every cut once, against that cut's best peer by each metric
    (pooled,) = [line for line in out.splitlines() if line.startswith("pooled over the 2 cuts")]
    user_cuts = sum(int(row[1]) for row in body)
    assert f"({user_cuts} user-cuts, " in pooled
    found = re.findall(r"(recall@10|ndcg@10) x(\d+\.\d+) \(95 % bootstrap over users "
                       r"(\d+\.\d+)-(\d+\.\d+); user-cuts ahead / behind / level "
                       r"(\d+) / (\d+) / (\d+)\)", pooled)
    assert [name for name, *_ in found] == ["recall@10", "ndcg@10"]
    for _, ratio, low, high, ahead, behind, level in found:
        assert float(low) <= float(ratio) + 0.01 and float(ratio) <= float(high) + 0.01
        assert int(ahead) + int(behind) + int(level) == user_cuts
    # the 0.8 cut is the one --protocol split prints
    assert bench.quality.main(["--protocol", "split", "--data", str(ratings), "--no-search"]) == 0
    single = {line.split("|")[1].strip(): line.split("|") for line in capsys.readouterr().out
              .splitlines() if line.startswith("|") and not line.startswith("|--")}
    assert float(single["model"][2]) == float(body[1][2])


def test_cuts_are_checked(capsys):
    for bad in (["--cuts", "0.8"], ["--protocol", "split", "--cuts", "0.8,1.2"],
                ["--protocol", "split", "--cuts", "a,b"]):
        with pytest.raises(SystemExit) as raised:
            bench.quality.main(bad)
        assert raised.value.code == 2
        assert "--cuts" in capsys.readouterr().err
