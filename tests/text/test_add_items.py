"""Adding items from their titles through a real updater and a real tritonserver.

A copy of the session's text build is served (text_encoder included) with an updater beside it,
for this module. Each test adds items of its own (fresh ids) and asserts relative to the state it
finds, so each passes alone and in any order. Nothing here asserts a timing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import grpc
import pytest

from clients import Client, UpdaterClient
from exporter.data import read_items
from freshrec.stack import serving_stack
from model_repository import contract as c
from tests.fixtures.builds import TEXT

pytestmark = pytest.mark.integration
K = 10


@pytest.fixture(scope="module")
def stack(builds, tmp_path_factory):
    repository = builds.copy(TEXT, tmp_path_factory.mktemp("add-items"))  # items get published
    with serving_stack(repository, models=TEXT.models, log_dir=repository.parent, updater=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def served(stack, text_build):
    """(Client, UpdaterClient, item id -> category, updater url) over the stack."""
    items = read_items(text_build.ratings.parent / "items.csv")
    with Client(stack.grpc_url) as client, UpdaterClient(stack.updater.url) as up:
        yield client, up, dict(zip(items.ids.tolist(), items.categories)), stack.updater.url


def _new_id():
    return 50_000_000 + uuid.uuid4().int % 1_000_000


def _fans(client, category_of, category, *, n_users=300):
    """Users whose top-K is mostly `category`, and users whose top-K holds none of it."""
    fans, others = [], []
    for user in range(1, n_users + 1):
        got = [category_of.get(i) for i in client.recommend(user, k=K).item_ids]
        if got.count(category) >= 8:
            fans.append(user)
        elif got.count(category) == 0:
            others.append(user)
    return fans, others


def test_an_added_item_is_recommended_to_users_of_its_category_after_one_publish(served):
    client, up, category_of, _ = served
    category = "space"
    fans, others = _fans(client, category_of, category)
    assert len(fans) >= 5 and len(others) >= 5, (len(fans), len(others))
    before = up.status()
    item = _new_id()
    reply = up.add_items([{"item_id": item, "title": "Starship Nebula Voyage", "category": category}])
    assert reply["item_ids"] == [item] and reply["version"] > before["published_version"]
    assert up.status()["items"] == before["items"] + 1
    answers = {u: client.recommend(u, k=K) for u in fans + others}
    assert {a.version for a in answers.values()} == {reply["version"]}  # served the moment we return
    fans_hit = sum(item in answers[u].item_ids for u in fans)
    others_hit = sum(item in answers[u].item_ids for u in others)
    print(f"added item in the top {K} of {fans_hit}/{len(fans)} fans, {others_hit}/{len(others)} others")
    # The title-only row reaches its category's fans far more often than anyone else. An absolute
    # share is luck of the seed: on the bursty generator (issue 14) 5 of 17 fans at seed 2, 0 of
    # 31 at seed 3; on the old one 7/7, 0/14 (measured offline; the row scores 0.1-3 below a
    # missed fan's 10th item, a weakness of title-only rows, not of the publish).
    assert fans_hit >= 2, (fans_hit, len(fans))
    assert fans_hit / len(fans) >= 3 * max(others_hit, 1) / len(others), (fans_hit, others_hit)


def test_an_added_item_learns_from_feedback_like_any_other(served):
    client, up, _, _ = served
    item = _new_id()
    up.add_items([{"item_id": item, "title": "Ancient Empire Chronicle"}])
    user = 7

    def score():  # the item's score for the user, over the whole catalogue
        answer = client.recommend(user, k=up.status()["items"])
        return answer.scores[answer.item_ids.index(item)], answer.version

    first, version = score()
    assert up.feedback(user, item, "purchase").accepted == 1
    published = up.publish()
    assert published["published"] and published["version"] > version
    second, version = score()
    assert version == published["version"]
    assert second > first


@pytest.mark.parametrize("title, field_error", [
    (b"", "items[1].title is empty"),
    (b"   ", "items[1].title is empty"),
    (b"\xff\xfe caf\xe9", "items[1].title must be UTF-8 text"),
    (b"x" * (c.MAX_TEXT_CHARS + 1), "items[1].title is too long: 2001 characters"),
    (" ".join(["moon"] * 300).encode(), "items[1].title is too long: 302 word pieces"),
])
def test_a_bad_title_adds_nothing_and_names_the_item(served, title, field_error):
    _, up, _, _ = served
    before = up.status()
    good = _new_id()
    with pytest.raises(grpc.RpcError) as err:
        up.add_items([{"item_id": good, "title": "Comet Orbit"}, {"item_id": _new_id(), "title": title}])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field_error), err.value.details()
    after = up.status()
    assert after["items"] == before["items"]
    assert after["published_version"] == before["published_version"]


def test_known_ids_are_already_exists_and_bad_ids_invalid_argument(served):
    client, up, category_of, _ = served
    before = up.status()
    known = next(iter(category_of))
    cases = [
        ([{"item_id": _new_id(), "title": "Moon"}, {"item_id": known, "title": "Moon Rocket"}],
         grpc.StatusCode.ALREADY_EXISTS, f"items[1].item_id: item {known} exists already"),
        ([{"title": "Moon"}], grpc.StatusCode.INVALID_ARGUMENT, "items[0].item_id: is required"),
        ([{"item_id": -3, "title": "Moon"}], grpc.StatusCode.INVALID_ARGUMENT, "items[0].item_id"),
        ([{"item_id": 12, "title": "A"}, {"item_id": 12, "title": "B"}], grpc.StatusCode.INVALID_ARGUMENT,
         "items[1].item_id: 12 repeats items[0]"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "items: no items sent"),
    ]
    for items, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            up.add_items(items)
        assert err.value.code() == code and err.value.details().startswith(message), err.value.details()
    assert up.status()["items"] == before["items"]
    assert up.status()["published_version"] == before["published_version"]


def test_items_add_command_reads_the_file_and_serves_the_items(served, tmp_path):
    client, up, _, url = served
    ids = [_new_id(), _new_id()]
    path = tmp_path / "new_items.csv"
    path.write_text(f'id,title,category\n{ids[0]},"Recipe Kitchen, Garlic Bread",cooking\n'
                    f"{ids[1]},Jazz Piano Album,music\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "freshrec.cli", "items", "add", "--file", str(path),
                           "--updater", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'"item_ids": [\n    {ids[0]},\n    {ids[1]}\n  ]' in done.stdout
    answer = client.recommend(None, k=5, text="garlic bread recipe")
    assert ids[0] in answer.item_ids


def test_items_add_command_names_the_bad_line_and_sends_nothing(served, tmp_path):
    _, up, _, url = served
    before = up.status()["items"]
    path = tmp_path / "bad.csv"
    path.write_text(f"id,title\n{_new_id()},Fine Title\n{_new_id()},\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "freshrec.cli", "items", "add", "--file", str(path),
                           "--updater", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "bad.csv:3: title is empty" in done.stderr
    assert up.status()["items"] == before
