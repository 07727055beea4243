"""The text projection, cold-item rows and their quality, and text search by category."""

import numpy as np
import pytest

from exporter.data import read_items
from exporter.evaluate import EvalSplit
from exporter.synthetic import CATEGORY_VOCABULARY
from exporter.text_projection import fit_projection, pick_cold_items, restrict_targets
from model_repository import contract as c
from model_repository import versions
from model_repository.serving import Query, Retriever
from model_repository.text_encoding import TextEncoderRuntime

# queries made of a category's own title words; the synthetic titles draw from the same lists
CATEGORY_QUERIES = {name: " ".join(words.split()[:3]) for name, words in CATEGORY_VOCABULARY.items()}


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12))
    w, b = rng.normal(size=(12, 4)), rng.normal(size=4)
    projection = fit_projection(x, x @ w + b, l2=1e-8)
    np.testing.assert_allclose(projection.weight, w, atol=1e-5)
    np.testing.assert_allclose(projection.bias, b, atol=1e-5)


def test_cold_items_are_a_seeded_tenth_of_the_titled_items(text_build):
    items = read_items(text_build.ratings.parent / "items.csv")
    cold = pick_cold_items(items)
    assert cold.size == round(0.1 * len(items)) == text_build.cold_items
    np.testing.assert_array_equal(cold, pick_cold_items(items))
    assert set(cold.tolist()) <= set(items.ids.tolist())


def test_restrict_targets_keeps_only_the_given_rows_and_users_with_one():
    split = EvalSplit(item_ids=np.arange(5), user_ids=np.array([10, 11, 12]),
                      target_offsets=np.array([0, 2, 3, 5]), target_items=np.array([0, 3, 1, 3, 4]),
                      seen_offsets=np.array([0, 1, 1, 2]), seen_items=np.array([2, 0]))
    got = restrict_targets(split, np.array([3]))
    assert got.user_ids.tolist() == [10, 12]
    assert got.target_offsets.tolist() == [0, 1, 2] and got.target_items.tolist() == [3, 3]
    assert got.seen_offsets.tolist() == [0, 1, 2] and got.seen_items.tolist() == [2, 0]


def _cold_table_recall(table: str, row: str) -> float:
    line = next(line for line in table.splitlines() if line.startswith(row))
    return float(line[len(row):].split()[0])


def test_cold_items_beat_random_and_popularity(text_build):
    table = text_build.cold_quality_table
    model = _cold_table_recall(table, "model (cold rows from text)")
    assert model > 2 * _cold_table_recall(table, "random"), table
    assert model > _cold_table_recall(table, "popularity"), table


@pytest.fixture(scope="module")
def text_search(text_build):
    repository = text_build.repository
    retriever = Retriever(repository / c.RETRIEVE / "1", tower=None)
    runtime = TextEncoderRuntime.from_version(repository / c.TEXT_ENCODER / "1")
    items = read_items(text_build.ratings.parent / "items.csv")
    category = dict(zip(items.ids.tolist(), items.categories))

    def search(text, k=10):
        (answer,) = retriever.answer([Query(user_id=None, k=k, text=text)], runtime.encode([text]))
        return [category[int(i)] for i in answer.item_ids]

    return search, sorted(set(items.categories))


def test_text_search_returns_items_of_the_named_category(text_search):
    search, categories = text_search
    share = {name: search(CATEGORY_QUERIES[name]).count(name) / 10 for name in categories}
    # measured: 1.0 for each of the 6 categories of TEXT_DATA; 0.7 leaves room for other BLAS
    assert min(share.values()) >= 0.7, share


def test_cold_items_are_found_by_their_title(text_build, text_search):
    """A cold item (no training event) is in the catalogue and reachable by text alone."""
    items = read_items(text_build.ratings.parent / "items.csv")
    _, tables = versions.load_tables(text_build.repository / c.RETRIEVE / "1")
    cold = pick_cold_items(items)
    title = dict(zip(items.ids.tolist(), items.titles))
    retriever = Retriever(text_build.repository / c.RETRIEVE / "1", tower=None)
    runtime = TextEncoderRuntime.from_version(text_build.repository / c.TEXT_ENCODER / "1")
    assert set(cold.tolist()) <= set(np.asarray(tables["item_ids"]).tolist())
    found = 0
    for item in cold.tolist():
        (answer,) = retriever.answer([Query(user_id=None, k=50, text=title[item])],
                                     runtime.encode([title[item]]))
        found += item in answer.item_ids.tolist()
    assert found / cold.size >= 0.5, f"{found} of {cold.size} cold items in their title's top 50"
