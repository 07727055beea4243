"""The updater's trainer replayed in process: `python -m bench.trainer_replay`.

A quick stand-in for `bench.quality --ablation` while choosing how the trainer learns (issue 33):
the same prequential replay (bench.replay: the 20 % after the cut in windows, each event asked
before it is learned, the user's seen items excluded), but no tritonserver, updater process or
intake. Each variant's SparseTrainer (updater.trainer, as the engine drives it: minibatches of
256 events in log order) learns each window, its tables are written as the next version
(model_repository.versions) and answered by the scoring code retrieve runs
(model_repository.serving.Retriever), the app sending the user's last ``--app-history`` items as
HISTORY. "off" answers from the base version throughout (publishing off). Each variant is set
against "off" with a 95 % paired bootstrap over users, and split by events whose item, or user,
is new after the cut (bench.ablation.new_after_the_cut). About half a minute a variant on
ml-latest-small 2018 (20,000 events, 9,742 items) on 2 cores.

Variants: off, shipped (the default TrainerConfig), and any TrainerConfig field set by name,
e.g. ``user_steps=all``, ``row_updates=False``, ``lr=0.01`` (comma-joined for several).

The base is chosen as bench.quality chooses it (the validation search), or set by hand with
``--ease DIM,L2,HISTORY_WEIGHT`` and ``--prior WEIGHT,HALF_LIFE_DAYS,SESSION_S,SESSION_WEIGHT``
(the settings a search chose before, to skip its minutes).

``--text``: the base as `freshrec build` makes it with the text encoder (the log's titles; MiniLM
exported and encoded as the build does, exporter.build.text_export): the projection is fitted on
the items with events before the cut, and every titled item without any (so every item new after
the cut) starts from its projected title instead of an empty row (issue 33: new items with their
text as the prior, the interactions taking over as they arrive).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

from bench.ablation import against, answers_in_process, new_after_the_cut
from bench.quality_cut import describe_model, train_on_the_cut
from bench.replay import RecentItems, replay
from exporter.data import Interactions
from model_repository import contract as c
from model_repository import versions
from model_repository.serving import Retriever
from updater.engine import version_tower
from updater.events import validate
from updater.settings import TrainerConfig
from updater.trainer import SparseTrainer

BATCH = 256  # the engine's minibatch at most (updater.engine reads this many at a time)
DAY_S = 86_400.0


class TrainerReplay:
    """A bench.replay recommender: the base version's tables, learned by a SparseTrainer per
    window (``config`` None: never, publishing off), each window's tables served in process."""

    def __init__(self, repository: Path, train: Interactions, scratch: Path, *,
                 config: TrainerConfig | None, history_len: int):
        version_dir = Path(repository) / c.RETRIEVE / "1"
        manifest, tables = versions.load_tables(version_dir)
        self.meta, self.retriever = manifest.meta, Retriever(version_dir)
        self.recent = RecentItems(history_len, train)
        self.model_dir, self.version, self.offset = Path(scratch) / c.RETRIEVE, 1, 0
        self.learn_cpu_s = 0.0
        self.trainer = None
        if config is not None:
            meta = self.retriever.meta
            self.trainer = SparseTrainer(tables, version_tower(tables, repository, meta),
                                         recency_decay=meta.recency_decay,
                                         popularity_half_life_s=meta.popularity_half_life_s,
                                         config=config, meta=meta)

    def recommend(self, user_ids, excludes, k):
        return answers_in_process(self.retriever, self.recent, user_ids, excludes, k)

    def send(self, events: Interactions) -> None:
        self.recent.add(events)

    def learn(self, window: Interactions) -> None:
        if self.trainer is None:
            return
        started = time.process_time()
        events = []
        for user, item, at in zip(window.user_ids.tolist(), window.item_ids.tolist(),
                                  window.timestamps.tolist()):
            self.offset += 1
            event = validate(f"r{self.offset}", int(user), int(item), "click", 0.0, float(at),
                             now=float(at))
            events.append(dataclasses.replace(event, offset=self.offset))
        for start in range(0, len(events), BATCH):
            self.trainer.apply_many(events[start:start + BATCH])
        self.learn_cpu_s += time.process_time() - started
        self.version += 1
        versions.write_version(self.model_dir, self.version, self.trainer.tables(), meta=self.meta)
        self.retriever = Retriever(self.model_dir / str(self.version))


def config_of(variant: str) -> TrainerConfig | None:
    """"off" -> None; "shipped" -> the defaults; "a=1,b=x" -> those TrainerConfig fields."""
    if variant == "off":
        return None
    if variant == "shipped":
        return TrainerConfig()
    fields = {f.name: f.type for f in dataclasses.fields(TrainerConfig)}
    values = {}
    for part in variant.split(","):
        name, _, text = part.partition("=")
        if name not in fields or not text:
            raise ValueError(f"variant {variant!r}: {name!r} is no TrainerConfig field=value "
                             f"(fields: {', '.join(fields)})")
        kind = fields[name]
        values[name] = (text == "True" if kind == "bool" else
                        int(text) if kind == "int" else float(text) if kind == "float" else text)
    return TrainerConfig(**values)


def _base(args):
    """(dataset, source, train, test, model, its description): searched as bench.quality does,
    or with --ease / --prior set by hand."""
    if args.ease is None:
        dataset, source, train, test, model, _, chosen = train_on_the_cut(
            args.data, seed=args.seed, search=not args.no_search)
        return dataset, source, train, test, model, describe_model(model, chosen)
    from exporter.train import TrainConfig

    dim, l2, history_weight = args.ease
    weight, half_life_days, session_s, session_weight = args.prior
    config = TrainConfig(method="ease", dim=int(dim), ease_l2=l2, history_weight=history_weight,
                         seed=args.seed)
    dataset, source, train, test, model, _, _ = train_on_the_cut(
        args.data, seed=args.seed, search=False, config=config, popularity_weight=weight,
        popularity_half_life_s=half_life_days * DAY_S, session_s=session_s,
        session_popularity_weight=session_weight)
    return dataset, source, train, test, model, (f"base model set by hand: closed form, rank {int(dim)}, "
                                        f"EASE l2 {l2:g}, history weight {history_weight:g}, "
                                        f"prior {args.prior}")


def _floats(n: int):
    def parse(text: str) -> tuple[float, ...]:
        values = tuple(float(part) for part in text.split(","))
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"{n} comma-separated numbers, got {text!r}")
        return values
    return parse


def main(argv: list[str] | None = None) -> int:
    from exporter.build import text_export, write_repository

    parser = argparse.ArgumentParser(prog="python -m bench.trainer_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=["off", "shipped"],
                        help="off, shipped, or TrainerConfig fields (default: off shipped)")
    parser.add_argument("--data", type=Path, help="ratings folder (default: synthetic)")
    parser.add_argument("--window-events", type=int, default=1000)
    parser.add_argument("--app-history", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-search", action="store_true", help="exporter.train's defaults")
    parser.add_argument("--ease", type=_floats(3), help="DIM,L2,HISTORY_WEIGHT: a closed form")
    parser.add_argument("--prior", type=_floats(4), default=(1.0, 0.0, 0.0, 0.0),
                        help="with --ease: WEIGHT,HALF_LIFE_DAYS,SESSION_S,SESSION_WEIGHT")
    parser.add_argument("--text", action="store_true",
                        help="items without events before the cut start from their projected "
                             "titles, as a build with the text encoder gives them")
    args = parser.parse_args(argv)
    if args.window_events < 1 or args.app_history < 1:
        parser.error("--window-events and --app-history must be >= 1")
    try:
        configs = {variant: config_of(variant) for variant in ["off", *args.variants]}
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    dataset, source, train, test, model, described = _base(args)
    print(f"data: {source}; {len(train)} events before the cut, {len(test)} replayed in windows "
          f"of {args.window_events}\n{described}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="freshrec-trainer-replay-") as scratch:
        text = None
        if args.text:
            if dataset.items is None or not any(t.strip() for t in dataset.items.titles):
                parser.error("--text needs item titles: this log has none")
            text, _ = text_export(model, dataset.items, Path(scratch), tensorrt=False)
            print("text: items without events before the cut start from their projected titles",
                  flush=True)
        repository = write_repository(model, Path(scratch) / "base", tensorrt=False,
                                      text=text).repository
        for variant, config in configs.items():
            with tempfile.TemporaryDirectory(dir=scratch) as own:
                learner = TrainerReplay(repository, train, Path(own), config=config,
                                        history_len=args.app_history)
                results[variant] = replay(train, test, learner, window_events=args.window_events)
            result = results[variant]
            line = (f"{variant}: recall@10 {result.metrics['recall@10']:.4f}, recall@50 "
                    f"{result.metrics['recall@50']:.4f}, learning {learner.learn_cpu_s:.1f} CPU s")
            if variant != "off":
                line += f", against off {against(result, results['off'])}"
            print(line, flush=True)
    for line in new_after_the_cut(train, list(results.items())):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
