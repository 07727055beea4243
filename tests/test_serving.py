"""retrieve's batch logic without a server, against a brute-force numpy reference."""

import numpy as np
import pytest

from model_repository import contract as c
from model_repository import versions
from model_repository.pooling import recency_weights
from model_repository.serving import (
    Query,
    RequestError,
    Retriever,
    answer_requests,
    blend_text,
    decode_query,
    embed_texts,
)

DIM = 8
N_USERS, N_ITEMS = 30, 50
USER_OFFSET, ITEM_OFFSET = 1000, 5000  # external ids never equal their rows


def _tower(user_emb, history_emb):
    return user_emb + 2.0 * history_emb


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    rng = np.random.default_rng(3)
    history = rng.integers(0, N_ITEMS, size=(N_USERS, 4))
    history[0] = -1  # a known user with no stored history
    history[1, :2] = -1
    tables = {
        "user_ids": np.arange(N_USERS, dtype=np.int64) * 7 + USER_OFFSET,
        "item_ids": np.arange(N_ITEMS, dtype=np.int64) * 3 + ITEM_OFFSET,
        "user_rows": rng.normal(size=(N_USERS, DIM)).astype(np.float32),
        "item_rows": rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
        "user_history": history.astype(np.int64),
        "item_popularity": rng.integers(0, 5, size=N_ITEMS).astype(np.float32),
    }
    path = versions.write_version(tmp_path_factory.mktemp("repo") / "retrieve", 4, tables,
                                  meta={"recency_decay": 0.5})
    return Retriever(path, _tower), tables


def _reference(tables, user_id, k, history=None, exclude=(), exclude_seen=False):
    """Loop-by-loop reference: rows, pooled history, scores, order by (-score, row)."""
    item_row = {int(i): r for r, i in enumerate(tables["item_ids"])}
    user_row = {int(u): r for r, u in enumerate(tables["user_ids"])}.get(user_id, -1)
    if history:
        rows = [item_row[i] for i in history if i in item_row]
    elif user_row >= 0:
        rows = [r for r in tables["user_history"][user_row] if r >= 0]
    else:
        rows = []
    banned = {item_row[i] for i in exclude if i in item_row} | (set(rows) if exclude_seen else set())
    if user_row < 0 and not rows:
        score = tables["item_popularity"]
    else:
        weights = recency_weights(np.array([0, len(rows)]), decay=0.5)
        pooled = sum((w * tables["item_rows"][r] for w, r in zip(weights, rows)), np.zeros(DIM))
        user = tables["user_rows"][user_row] if user_row >= 0 else np.zeros(DIM)
        score = tables["item_rows"] @ _tower(user, pooled).astype(np.float32)
    order = sorted((r for r in range(N_ITEMS) if r not in banned), key=lambda r: (-score[r], r))
    top = order[:k]
    return tables["item_ids"][top], score[top]


CASES = [
    pytest.param(dict(user_id=USER_OFFSET + 7 * 5, k=10), id="known-user-stored-history"),
    pytest.param(dict(user_id=USER_OFFSET, k=5), id="known-user-no-history"),
    pytest.param(dict(user_id=USER_OFFSET + 7, k=3, history=[ITEM_OFFSET + 3, 424242]),
                 id="request-history-with-unknown-id"),
    pytest.param(dict(user_id=1, k=4, history=[ITEM_OFFSET, ITEM_OFFSET + 9]), id="unknown-user-history"),
    pytest.param(dict(user_id=1, k=6), id="unknown-user-popularity"),
    pytest.param(dict(user_id=1, k=6, exclude=[ITEM_OFFSET + 3 * 7]), id="popularity-excluding"),
    pytest.param(dict(user_id=USER_OFFSET + 14, k=N_ITEMS, exclude_seen=True,
                      exclude=[ITEM_OFFSET, 77]), id="whole-catalogue-excluding-seen"),
]


@pytest.mark.parametrize("case", CASES)
def test_answers_match_the_reference(retriever, case):
    model, tables = retriever
    query = Query(
        user_id=case["user_id"], k=case["k"],
        history=None if "history" not in case else np.array(case["history"]),
        exclude=np.array(case.get("exclude", []), dtype=np.int64),
        exclude_seen=case.get("exclude_seen", False),
    )
    model.check(query)
    (answer,) = model.answer([query])
    want_ids, want_scores = _reference(tables, **case)
    np.testing.assert_allclose(answer.scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(answer.item_ids, want_ids)
    assert answer.version == 4


def test_a_mixed_batch_answers_each_query_as_if_alone(retriever):
    model, _ = retriever
    queries = [Query(user_id=USER_OFFSET + 7 * i, k=2 + i) for i in range(5)] + [Query(user_id=1, k=3)]
    batch = model.answer(queries)
    for query, answer in zip(queries, batch):
        (alone,) = model.answer([query])
        np.testing.assert_array_equal(answer.item_ids, alone.item_ids)
        assert len(answer.item_ids) == query.k


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "USER_ID is required"),
        ({c.USER_ID: np.array([[1, 2]])}, "USER_ID must hold exactly one value"),
        ({c.USER_ID: np.array([[1]]), c.K: np.array([[1, 2]], np.int32)}, "K must hold exactly one"),
    ],
)
def test_decode_names_the_field(inputs, message):
    with pytest.raises(RequestError, match=message):
        decode_query(inputs)


@pytest.mark.parametrize("k, message", [(0, "K must be >= 1"), (N_ITEMS + 1, "exceeds the catalogue")])
def test_check_rejects_k_outside_the_catalogue(retriever, k, message):
    model, _ = retriever
    with pytest.raises(RequestError, match=message):
        model.check(Query(user_id=USER_OFFSET, k=k))


def test_decode_fills_defaults():
    query = decode_query({c.USER_ID: np.array([[42]], dtype=np.int64)})
    assert (query.user_id, query.k, query.history, query.exclude, query.exclude_seen) == (
        42, c.DEFAULT_K, None, None, False)


# --- QUERY_TEXT: decoding, blending and text search (the text embedding is given) ---

TEXT_DIM = 6  # the projection's input width; the real encoder's is c.TEXT_DIM


@pytest.fixture(scope="module")
def text_retriever(tmp_path_factory, retriever):
    _, tables = retriever
    rng = np.random.default_rng(4)
    text_tables = {**tables,
                   "text_projection": rng.normal(size=(TEXT_DIM, DIM)).astype(np.float32),
                   "text_projection_bias": rng.normal(size=DIM).astype(np.float32)}
    path = versions.write_version(tmp_path_factory.mktemp("repo") / "retrieve", 5, text_tables,
                                  meta={"recency_decay": 0.5, "text_weight": 0.5})
    return Retriever(path, _tower), text_tables


def _text_reference(tables, text_emb, user_query=None, weight=0.5, k=5):
    projected = text_emb @ tables["text_projection"] + tables["text_projection_bias"]
    if user_query is None:
        query = projected
    else:
        query = user_query + weight * np.linalg.norm(user_query) * projected / np.linalg.norm(projected)
    score = tables["item_rows"] @ query.astype(np.float32)
    top = sorted(range(N_ITEMS), key=lambda r: (-score[r], r))[:k]
    return tables["item_ids"][top], score[top]


def test_text_without_a_user_is_text_search(text_retriever):
    model, tables = text_retriever
    emb = np.random.default_rng(5).normal(size=TEXT_DIM).astype(np.float32)
    (answer,) = model.answer([Query(user_id=None, k=5, text="space opera")], [emb])
    want_ids, want_scores = _text_reference(tables, emb)
    np.testing.assert_array_equal(answer.item_ids, want_ids)
    np.testing.assert_allclose(answer.scores, want_scores, rtol=1e-5, atol=1e-5)


def test_text_with_a_known_user_blends_into_the_user_query(text_retriever):
    model, tables = text_retriever
    user = int(tables["user_ids"][3])
    emb = np.random.default_rng(6).normal(size=TEXT_DIM).astype(np.float32)
    plain, with_text = model.answer(
        [Query(user_id=user, k=5), Query(user_id=user, k=5, text="x")], [None, emb])
    np.testing.assert_array_equal(plain.item_ids, _reference(tables, user, 5)[0])  # unchanged
    rows = [r for r in tables["user_history"][3] if r >= 0]
    weights = recency_weights(np.array([0, len(rows)]), decay=0.5)
    pooled = sum((w * tables["item_rows"][r] for w, r in zip(weights, rows)), np.zeros(DIM))
    user_query = _tower(tables["user_rows"][3], pooled)
    want_ids, want_scores = _text_reference(tables, emb, user_query=user_query)
    np.testing.assert_array_equal(with_text.item_ids, want_ids)
    np.testing.assert_allclose(with_text.scores, want_scores, rtol=1e-4, atol=1e-4)


def test_blend_weight_zero_ignores_the_text_and_scales_with_the_user_norm():
    user = np.array([[3.0, 4.0]], np.float32)
    text = np.array([[0.0, 10.0]], np.float32)
    np.testing.assert_allclose(blend_text(user, text, weight=0.0), user)
    np.testing.assert_allclose(blend_text(user, text, weight=1.0), [[3.0, 9.0]])  # + 5 * (0, 1)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfeabc", "QUERY_TEXT must be UTF-8"),
        (b"", "QUERY_TEXT is empty"),
        (b" \t\n", "QUERY_TEXT is empty"),
        (("a" * (c.MAX_TEXT_CHARS + 1)).encode(), "QUERY_TEXT is too long"),
    ],
    ids=["not-utf8", "empty", "whitespace", "too-many-chars"],
)
def test_decode_rejects_bad_text_naming_the_field(raw, message):
    with pytest.raises(RequestError, match=message):
        decode_query({c.USER_ID: np.array([[1]]), c.QUERY_TEXT: np.array([[raw]], dtype=object)})


def test_user_id_is_optional_only_with_text():
    query = decode_query({c.QUERY_TEXT: np.array([["naïve café".encode()]], dtype=object)})
    assert (query.user_id, query.text) == (None, "naïve café")
    with pytest.raises(RequestError, match="USER_ID is required"):
        decode_query({c.K: np.array([[3]], np.int32)})


def test_a_version_without_text_tables_refuses_query_text(retriever):
    model, _ = retriever
    with pytest.raises(RequestError, match="QUERY_TEXT is not supported"):
        model.check(Query(user_id=None, text="space"))


def test_one_refused_text_fails_only_its_own_query():
    def encode(texts):
        if any("bad" in t for t in texts):
            raise RequestError("QUERY_TEXT is too long")
        return np.ones((len(texts), 2), np.float32)

    queries = [Query(user_id=1, text="good"), Query(user_id=2), Query(user_id=3, text="bad")]
    first, second, third = embed_texts(queries, encode)
    np.testing.assert_array_equal(first, [1.0, 1.0])
    assert second is None and isinstance(third, RequestError)


# --- answer_requests: what retrieve's model.py answers a batch, one outcome per request ---

def _inputs(user_id=None, k=None, text=None):
    inputs = {}
    if user_id is not None:
        inputs[c.USER_ID] = np.array([[user_id]], dtype=np.int64)
    if k is not None:
        inputs[c.K] = np.array([[k]], dtype=np.int32)
    if text is not None:
        inputs[c.QUERY_TEXT] = np.array([[text.encode()]], dtype=object)
    return inputs


def test_answer_requests_gives_each_request_its_own_outcome_in_order(text_retriever):
    model, tables = text_retriever
    user = int(tables["user_ids"][2])

    def encode(texts):
        if any("bad" in t for t in texts):
            raise RequestError("TEXT is too long")
        return np.ones((len(texts), TEXT_DIM), np.float32)

    batch = [_inputs(user, k=3), _inputs(k=2), _inputs(user, k=0), _inputs(text="bad"),
             _inputs(user, k=4, text="good")]
    alone = model.answer([Query(user_id=user, k=3)])[0]
    first, missing_user, bad_k, bad_text, blended = answer_requests(model, batch, encode)
    np.testing.assert_array_equal(first.item_ids, alone.item_ids)
    assert str(missing_user) == f"{c.USER_ID} is required (unless {c.QUERY_TEXT} is given)"
    assert isinstance(bad_k, RequestError) and str(bad_k) == "K must be >= 1, got 0"
    assert isinstance(bad_text, RequestError) and "too long" in str(bad_text)
    assert blended.item_ids.size == 4 and blended.version == 5


def test_an_unexpected_failure_is_the_outcome_of_every_valid_request_only(retriever):
    model, tables = retriever
    user = int(tables["user_ids"][2])

    class Broken(RuntimeError):
        pass

    def tower(user_emb, history_emb):
        raise Broken("tower down")

    broken = Retriever(model.version_dir, tower)  # this version has no tower tables
    outcomes = answer_requests(broken, [_inputs(user), _inputs(user, k=0), _inputs(user)],
                               encode=None)
    assert isinstance(outcomes[0], Broken) and outcomes[2] is outcomes[0]
    assert isinstance(outcomes[1], RequestError)
