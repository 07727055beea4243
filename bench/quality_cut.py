"""The cut both protocols of bench.quality train on, and the cells their reports share.

The earliest ``train_fraction`` (80 %) of the events by time trains the base model as
`freshrec build` does (exporter.build.train_model); torch and the exporter load only when a
model is trained, so importing bench.quality loads no torch.
"""

from __future__ import annotations

import time
from pathlib import Path

TRAIN_FRACTION = 0.8  # build's cut: the earliest 80 % of events train, the rest is evaluated


def load_events(data: Path | None, *, seed: int):
    from exporter.data import read_dataset
    from exporter.synthetic import generate_synthetic

    if data is None:
        return generate_synthetic(seed=seed), f"synthetic (exporter.synthetic defaults, seed {seed})"
    return read_dataset(data), str(data)


def train_on_the_cut(data: Path | None, *, seed: int, search: bool = True,
                     train_fraction: float = TRAIN_FRACTION, config=None, **prior):
    """(dataset, source, train, test, model, train seconds, the search's result or None): the
    earliest ``train_fraction`` (80 %) trains the base model as `freshrec build` does
    (exporter.build.train_model: settings and popularity prior chosen on a validation slice;
    ``search=False``: ``config``, exporter.train's defaults when None, with the prior set by
    ``prior``, train_model's popularity_* and session_* arguments)."""
    from exporter.build import train_model
    from exporter.data import split_by_time
    from exporter.train import TrainConfig

    dataset, source = load_events(data, seed=seed)
    train, test = split_by_time(dataset.interactions, train_fraction=train_fraction)
    started = time.perf_counter()
    model, chosen = train_model(train, items=dataset.items, config=config or TrainConfig(seed=seed),
                                search=search, progress=False, **prior)
    return dataset, source, train, test, model, time.perf_counter() - started, chosen


def describe_model(model, chosen) -> str:
    from exporter.build import describe_choice

    if chosen is None:
        return f"base model: exporter.train defaults (d = {model.config.dim}), no search"
    return ("base model: as `freshrec build` chooses it, " + describe_choice(chosen)).replace("\n", " ")


def ratio_text(ours: float, theirs: float) -> str:
    """ours / theirs with two decimals; "n/a" where theirs is 0."""
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def package_version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
