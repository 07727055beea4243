"""gRPC recommend through the real tritonserver, against a torch reference of the same version."""

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import Client
from clients.client import recommend_inputs
from model_repository import contract as c
from tests.fixtures.reference import SCORE_ATOL, TorchReference

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference(built):
    return TorchReference(built.repository)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_url) as cl:
        yield cl


def _known(reference, index):
    return int(reference.tables["user_ids"][index])


def test_known_users_get_the_reference_topk(client, reference):
    for index in (0, 7, 42):
        user = _known(reference, index)
        answer = client.recommend(user, k=10)
        assert answer.version == 1
        reference.check_topk(answer, user, 10)


def test_request_history_overrides_the_stored_one(client, reference):
    user = _known(reference, 3)
    history = [int(i) for i in reference.tables["item_ids"][[5, 9, 11]]]
    answer = client.recommend(user, k=7, history=history)
    reference.check_topk(answer, user, 7, history=history)


def test_unknown_user_is_served_from_history_then_popularity(client, reference):
    history = [int(i) for i in reference.tables["item_ids"][[1, 2]]]
    from_history = client.recommend(-12345, k=5, history=history)
    reference.check_topk(from_history, -12345, 5, history=history)
    popular = client.recommend(-12345, k=5)
    order = np.argsort(-reference.tables["item_popularity"], kind="stable")[:5]
    assert popular.item_ids == [int(i) for i in reference.tables["item_ids"][order]]


def test_unknown_history_ids_are_ignored(client, reference):
    user = _known(reference, 4)
    known = [int(reference.tables["item_ids"][8])]
    with_unknown = client.recommend(user, k=5, history=[987654321, *known])
    assert with_unknown.item_ids == client.recommend(user, k=5, history=known).item_ids


def test_excluded_and_seen_items_never_come_back(client, reference):
    user = _known(reference, 5)
    first = client.recommend(user, k=5)
    seen = [int(reference.tables["item_ids"][r]) for r in reference.tables["user_history"][5] if r >= 0]
    answer = client.recommend(user, k=20, exclude=first.item_ids[:3], exclude_seen=True)
    assert not set(answer.item_ids) & set(first.item_ids[:3])
    assert not set(answer.item_ids) & set(seen)


def _raw_infer(server, inputs):
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        return raw.infer(c.RECOMMEND, inputs)


def _tensor(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), {
        np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32",
    }[array.dtype])
    tensor.set_data_from_numpy(array)
    return tensor


BAD_REQUESTS = [
    pytest.param(lambda n: recommend_inputs(1, k=0), "K", id="k-zero"),
    pytest.param(lambda n: recommend_inputs(1, k=-3), "K", id="k-negative"),
    pytest.param(lambda n: recommend_inputs(1, k=n + 1), "K", id="k-above-catalogue"),
    pytest.param(lambda n: [_tensor(c.USER_ID, np.array([[1.5]], np.float32))], "USER_ID",
                 id="user-id-wrong-dtype"),
    pytest.param(lambda n: [_tensor(c.USER_ID, np.array([[1, 2]], np.int64))], "USER_ID",
                 id="user-id-wrong-shape"),
    pytest.param(lambda n: [_tensor(c.K, np.array([[3]], np.int32))], "USER_ID", id="user-id-missing"),
    pytest.param(lambda n: [_tensor(c.USER_ID, np.array([[1]], np.int64)),
                            _tensor(c.K, np.array([[3]], np.int64))], "K", id="k-wrong-dtype"),
]


@pytest.mark.parametrize("make_inputs, field", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(server, client, reference, make_inputs, field):
    n_items = len(reference.tables["item_ids"])
    with pytest.raises(InferenceServerException) as caught:
        _raw_infer(server, make_inputs(n_items))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert field in caught.value.message(), caught.value.message()
    # and the server keeps serving
    assert len(client.recommend(_known(reference, 0), k=3).item_ids) == 3


# --- QUERY_TEXT: text search and blending through the real server ---

CATEGORY_WORDS = {"space": "galaxy orbit rocket", "cooking": "recipe kitchen spice",
                  "sports": "football match stadium", "music": "guitar melody concert"}


@pytest.fixture(scope="module")
def text_reference(built):
    """The same retrieve + text_encoder versions answered in-process (numpy, onnxruntime)."""
    from exporter.data import read_items
    from model_repository.serving import Query, Retriever
    from model_repository.text_encoding import TextEncoderRuntime

    repository = built.repository
    retriever = Retriever(repository / c.RETRIEVE / "1")  # the version's own tower
    runtime = TextEncoderRuntime.from_version(repository / c.TEXT_ENCODER / "1")
    items = read_items(built.ratings.parent / "items.csv")

    def answer(user_id, text, k=10):
        return retriever.answer([Query(user_id=user_id, k=k, text=text)], runtime.encode([text]))[0]

    return answer, dict(zip(items.ids.tolist(), items.categories))


@pytest.mark.parametrize("category", sorted(CATEGORY_WORDS))
def test_text_search_without_a_user_returns_the_category(client, text_reference, category):
    answer_here, category_of = text_reference
    answer = client.recommend(None, k=10, text=CATEGORY_WORDS[category])
    assert answer.version == 1
    got = [category_of[i] for i in answer.item_ids]
    assert got.count(category) >= 7, got  # measured 10 of 10 for each
    want = answer_here(None, CATEGORY_WORDS[category])
    assert answer.item_ids == want.item_ids.tolist()
    np.testing.assert_allclose(answer.scores, want.scores, atol=SCORE_ATOL, rtol=1e-5)


def test_text_with_a_user_blends_and_moves_towards_the_text(client, reference, text_reference):
    answer_here, category_of = text_reference
    user = _known(reference, 7)
    plain = client.recommend(user, k=10)
    blended = client.recommend(user, k=10, text=CATEGORY_WORDS["cooking"])
    want = answer_here(user, CATEGORY_WORDS["cooking"])
    assert blended.item_ids == want.item_ids.tolist()
    np.testing.assert_allclose(blended.scores, want.scores, atol=SCORE_ATOL, rtol=1e-5)
    cooking = [sum(category_of[i] == "cooking" for i in a.item_ids) for a in (plain, blended)]
    assert cooking[1] > cooking[0] or cooking[0] == 10, cooking
    reference.check_topk(client.recommend(user, k=10), user, 10)  # no text: unchanged


def _text_input(name, raw):
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[raw]], dtype=np.object_))
    return tensor


BAD_TEXTS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace"),
    pytest.param(b"\xff\xfe space", id="not-utf8"),
    pytest.param(b"a" * (c.MAX_TEXT_CHARS + 1), id="too-many-characters"),
    pytest.param(" ".join(["galaxy"] * c.MAX_TEXT_TOKENS).encode(), id="too-many-word-pieces"),
]


@pytest.mark.parametrize("raw", BAD_TEXTS)
@pytest.mark.parametrize("with_user", [True, False], ids=["user", "no-user"])
def test_bad_query_text_is_invalid_argument_naming_query_text(server, client, reference, raw,
                                                              with_user):
    inputs = [_text_input(c.QUERY_TEXT, raw)]
    if with_user:
        inputs.append(_tensor(c.USER_ID, np.array([[_known(reference, 0)]], np.int64)))
    with pytest.raises(InferenceServerException) as caught:
        _raw_infer(server, inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert c.QUERY_TEXT in caught.value.message(), caught.value.message()
    assert len(client.recommend(None, k=3, text="space").item_ids) == 3  # still serving


@pytest.mark.parametrize("raw", BAD_TEXTS)
def test_text_encoder_rejects_bad_text_naming_text(server, raw):
    with grpcclient.InferenceServerClient(server.grpc_url) as raw_client:
        with pytest.raises(InferenceServerException) as caught:
            raw_client.infer(c.TEXT_ENCODER, [_text_input(c.TEXT, raw)])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert c.TEXT in caught.value.message(), caught.value.message()


def test_a_refused_text_in_a_batch_fails_only_its_own_request(server, client):
    """Concurrent requests share a batch (dynamic batching); the over-long text fails alone."""
    too_long = " ".join(["galaxy"] * c.MAX_TEXT_TOKENS)
    with grpcclient.InferenceServerClient(server.grpc_url) as raw_client:
        results = []
        for text in ["recipe kitchen", too_long, "guitar concert"] * 4:
            raw_client.async_infer(c.RECOMMEND, recommend_inputs(None, k=5, text=text),
                                   callback=lambda result, error: results.append((result, error)))
        deadline = time.monotonic() + 30
        while len(results) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
    errors = [e for _, e in results if e is not None]
    assert len(results) == 12 and len(errors) == 4, errors
    assert all(c.QUERY_TEXT in e.message() for e in errors)


def test_text_encoder_embeds_like_the_in_process_runtime(server, built):
    from model_repository.text_encoding import TextEncoderRuntime

    runtime = TextEncoderRuntime.from_version(built.repository / c.TEXT_ENCODER / "1")
    with grpcclient.InferenceServerClient(server.grpc_url) as raw_client:
        result = raw_client.infer(c.TEXT_ENCODER, [_text_input(c.TEXT, "naïve café".encode())])
    np.testing.assert_allclose(result.as_numpy(c.TEXT_EMB), runtime.encode(["naïve café"]), atol=1e-5)
