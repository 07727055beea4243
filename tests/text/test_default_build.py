"""The live path on `freshrec build`'s default settings (search on, prior and trend chosen by it),
through a real updater and a real tritonserver (issue 27).

- An item added from its title is the first answer to a text search for that title, and in the
  top 10 for a reworded one: the popularity prior, whose weight the search chose for user
  queries, once put it 81st of 1,001 on the default synthetic build.
- A handful of clicks after a gap in traffic does not decide what every new user sees: the
  build's newest event is years old, so the trend counts have decayed to nothing by the time the
  clicks (stamped now) arrive; the trend's minimum mass keeps all-time popularity under them.

Each test asserts relative to the state it finds. Nothing here asserts a timing.
"""

from __future__ import annotations

import uuid

import pytest

from clients import Client, UpdaterClient
from freshrec.stack import serving_stack
from tests.fixtures.builds import DEFAULT

pytestmark = pytest.mark.integration
K = 10
TITLE = "Quantum lighthouse keepers of the northern fjord"
REWORDED = "Lighthouse keepers of a northern fjord: a quantum story"


@pytest.fixture(scope="module")
def served(builds, tmp_path_factory):
    """(Client, UpdaterClient) over a private copy of the default build, served with an updater."""
    repository = builds.copy(DEFAULT, tmp_path_factory.mktemp("default-build"))
    with serving_stack(repository, models=DEFAULT.models, log_dir=repository.parent,
                       updater=True) as stack:
        with Client(stack.grpc_url) as client, UpdaterClient(stack.updater.url) as up:
            yield client, up


def _new_id() -> int:
    return 60_000_000 + uuid.uuid4().int % 1_000_000


def test_an_item_added_from_its_title_is_found_by_that_title(served):
    client, up = served
    item = _new_id()
    reply = up.add_items([{"item_id": item, "title": TITLE}])
    assert reply["item_ids"] == [item]
    own = client.recommend(None, k=K, text=TITLE)
    reworded = client.recommend(None, k=K, text=REWORDED)
    assert own.version == reworded.version == reply["version"]
    assert own.item_ids[0] == item, (own.item_ids, own.scores)
    assert item in reworded.item_ids, (reworded.item_ids, reworded.scores)


def test_five_clicks_after_a_gap_do_not_decide_what_a_new_user_sees(served):
    client, up = served
    new_user = -_new_id()  # never a row: served from popularity
    before = client.recommend(new_user, k=50).item_ids
    clicked = before[-1]  # the 50th most popular item
    for _ in range(5):  # 5 users, one click each, stamped now: years after the build's last event
        assert up.feedback(_new_id(), clicked, "click").accepted == 1
    version = up.publish()["version"]
    after = client.recommend(new_user, k=50)
    assert after.version == version
    # the gap has decayed the build's trend, so all-time popularity leads now (the head may change
    # from the build's trending item): five clicks lift their item, they do not take the top
    assert after.item_ids[0] != clicked, (clicked, after.item_ids[:5], after.scores[:5])
    assert after.item_ids.index(clicked) > 0
    assert clicked in after.item_ids[:49]  # ... while the clicks still count
