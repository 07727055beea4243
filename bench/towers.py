"""The two user towers on the protocol `freshrec build` prints, in the same run, on each log.

    python -m bench.towers                                 # synthetic (the generator's defaults)
    python -m bench.towers --data PATH [--data PATH ...]   # u.data, ratings.dat or ratings.csv
    python -m bench.towers --synthetic --data PATH         # both
    python -m bench.towers --no-search                     # default settings, no validation search

Per log: the global 80/20 time split `build` uses (exporter.data.split_by_time); per tower
(TrainConfig.tower: "sequence", "pooled") the model `build` would serve, trained the same way
(exporter.build.train_model: settings and popularity prior chosen on the training window's
latest 10 % within the same time budget, from the same TrainConfig but for the tower, same
seed), scored with exporter.evaluate on the test 20 %: recall@10, NDCG@10 and recall@50 over
the same users for each tower, its "history only" row (zero user rows: how a user without a row
is served) and popularity. "train s" is the wall time of search plus training. The catalogue is
the ratings' items plus those of an item file found beside them; the text encoder is off (the
towers' comparison, not the cold-item one).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from bench.report import machine_header, print_table
from exporter import DEFAULT_SEARCH_BUDGET_S
from exporter.build import train_model
from exporter.data import Dataset, read_dataset, split_by_time
from exporter.evaluate import evaluate
from exporter.synthetic import generate_synthetic
from exporter.train import METHOD_EASE, TrainConfig
from model_repository import retrieve_schema as schema

log = logging.getLogger(__name__)

METRICS = ("recall@10", "ndcg@10", "recall@50")


def compare(dataset: Dataset, *, name: str, search: bool, budget_s: float,
            base: TrainConfig | None = None) -> list[list]:
    """Rows of the table for one data set: each tower, its history-only row, then popularity.
    ``base``: the settings both towers train (or start the search) from, but for the tower;
    TrainConfig's defaults when None."""
    train, test = split_by_time(dataset.interactions)
    rows, popularity = [], None
    for kind in schema.TOWER_KINDS:
        started = time.monotonic()
        model, chosen = train_model(train, items=dataset.items,
                                    config=replace(base or TrainConfig(), tower=kind),
                                    search=search, search_budget_s=budget_s, progress=False)
        seconds = time.monotonic() - started
        result = evaluate(model, train, test)
        c = model.config
        settings = ((f"closed form, rank {c.dim}, l2 {c.ease_l2:g}" if c.method == METHOD_EASE
                     else f"dim {c.dim}, epochs {c.epochs}, lr {c.lr:g}")
                    + f", prior {model.popularity_weight:g}"
                    + (f", {chosen.budget_cut} cut" if chosen and chosen.budget_cut else ""))
        for row, label in (("model", kind), ("history only", f"{kind}, history only")):
            rows.append([name, label, *(result[row][m] for m in METRICS),
                         int(result[row]["users"]), seconds if row == "model" else float("nan"),
                         settings if row == "model" else ""])
        popularity = result["popularity"]
    rows.append([name, "popularity", *(popularity[m] for m in METRICS), int(popularity["users"]),
                 float("nan"), ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.towers",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="a ratings file or a folder holding one (repeat for several); "
                             "default: the synthetic set")
    parser.add_argument("--synthetic", action="store_true",
                        help="the synthetic set too (first), with --data")
    parser.add_argument("--no-search", action="store_true",
                        help="train with the default settings (no validation search, no prior)")
    parser.add_argument("--search-budget-s", type=float, default=DEFAULT_SEARCH_BUDGET_S,
                        help=f"each tower's search budget (default {DEFAULT_SEARCH_BUDGET_S:g})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sources = ([None] if args.synthetic or not args.data else []) + args.data
    print(machine_header([
        "protocol: exporter.evaluate on the latest 20 % of events by time (trained on the earliest "
        "80 %); items a user saw in training excluded; same split, seed and budget per tower",
        "settings: " + ("TrainConfig defaults" if args.no_search else
                        f"exporter.search on the training window, {args.search_budget_s:g} s each"),
    ]), flush=True)
    for path in sources:  # a table per log, printed as it is done (a log takes minutes)
        dataset = generate_synthetic(progress=False) if path is None else read_dataset(path)
        name = ("synthetic" if path is None else path.name if path.is_dir()
                else f"{path.parent.name}/{path.name}")
        rows = compare(dataset, name=name, search=not args.no_search,
                       budget_s=args.search_budget_s)
        print_table(["log", "tower", *METRICS, "users", "train s", "chosen"], rows)
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
