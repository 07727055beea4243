"""Both user towers through the real tritonserver: served answers equal the torch reference of the
same version, in batches of ragged histories, and an event reaches the next request's history."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from clients import Client, UpdaterClient
from freshrec.stack import serving_stack
from model_repository import retrieve_schema as schema
from tests.fixtures.builds import SMALL
from tests.fixtures.reference import TorchReference
from tests.updater.test_live_history import NO_PUBLISH

pytestmark = pytest.mark.integration
# the SMALL data set trained with each tower (a short window, so most histories fill it)
SPECS = {kind: replace(SMALL, name=f"small-{kind}", train=replace(SMALL.train, tower=kind,
                                                                   history_len=8))
         for kind in schema.TOWER_KINDS}


@pytest.fixture(scope="module", params=schema.TOWER_KINDS)
def stack(request, builds, tmp_path_factory):
    """A copy per tower (the updater writes the live history into it), served with an updater
    that publishes nothing, so version 1 answers throughout."""
    spec = SPECS[request.param]
    repository = builds.copy(spec, tmp_path_factory.mktemp(spec.name))
    with serving_stack(repository, models=spec.models, log_dir=repository.parent) as stack:
        stack.start_updater(args=NO_PUBLISH)
        yield stack


@pytest.fixture(scope="module")
def reference(stack):
    reference = TorchReference(stack.repository)
    assert reference.meta.tower == reference.tower.kind
    return reference


def test_the_version_carries_the_tower_it_was_built_with(reference, request):
    assert reference.meta.tower == request.node.callspec.params["stack"]


def test_concurrent_requests_with_ragged_histories_get_the_reference_topk(stack, reference):
    """Concurrent requests share batches (dynamic batching): stored histories, HISTORY shorter
    and longer than the window, unknown users served from HISTORY."""
    rng = np.random.default_rng(4)
    users = reference.tables["user_ids"]
    items = reference.tables["item_ids"]
    window = reference.meta.history_len
    asks = []
    for n in range(48):
        user = int(users[n % len(users)]) if n % 4 else -(1000 + n)  # every 4th unknown
        size = (0, 1, window - 1, window, window + 5)[n % 5] if n % 4 else 1 + n % 7
        history = [int(i) for i in rng.choice(items, size=size, replace=False)] or None
        asks.append((user, history))

    def ask(args):
        user, history = args
        with Client(stack.grpc_url) as client:
            return client.recommend(user, k=10, history=history)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, asks))
    for (user, history), answer in zip(asks, answers):
        assert answer.version == 1
        reference.check_topk(answer, user, 10, history=history)


def test_each_event_is_in_the_next_requests_history(stack, reference):
    """A new user (no row): after each click, the answer is the reference's for the clicks so
    far, most recent last (the live history; no version is published)."""
    items = reference.tables["item_ids"]
    rng = np.random.default_rng(5)
    clicked: list[int] = []
    user = 60_000_000 + uuid.uuid4().int % 1_000_000
    with Client(stack.grpc_url) as client, UpdaterClient(stack.updater.url) as updater:
        for item in rng.choice(items, size=reference.meta.history_len + 3, replace=False):
            updater.feedback(user, int(item), "click")
            clicked.append(int(item))
            answer = client.recommend(user, k=10)
            assert answer.version == 1
            reference.check_topk(answer, user, 10, history=clicked[-reference.meta.history_len:])

