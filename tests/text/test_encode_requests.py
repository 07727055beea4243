"""text_encoding.encode_requests: what text_encoder's model.py answers a batch."""

import numpy as np
import pytest

from model_repository import contract as c
from model_repository.serving import RequestError
from model_repository.text_encoding import TextEncoderRuntime, encode_requests


@pytest.fixture(scope="module")
def runtime(text_build):
    return TextEncoderRuntime.from_version(text_build.repository / c.TEXT_ENCODER / "1")


def _texts(*texts):
    return np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=object)


def test_each_request_gets_its_rows_or_the_error_naming_text(runtime):
    batch = [_texts("space rocket"), _texts(b"\xff\xfe"), _texts("   "), _texts("cooking", "pasta"),
             _texts("word " * 300)]
    good, not_utf8, empty, two, too_long = encode_requests(runtime, batch)
    np.testing.assert_allclose(good, runtime.encode(["space rocket"]), atol=1e-5)
    np.testing.assert_allclose(two, runtime.encode(["cooking", "pasta"]), atol=1e-5)
    assert good.shape == (1, c.TEXT_DIM) and two.shape == (2, c.TEXT_DIM)
    assert str(not_utf8) == "TEXT must be UTF-8 text" and str(empty) == "TEXT is empty"
    assert isinstance(too_long, RequestError) and str(too_long).startswith("TEXT is too long")


def test_a_failed_session_call_is_every_valid_requests_outcome(runtime, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("onnxruntime failed")

    monkeypatch.setattr(runtime, "run", fail)
    first, refused, second = encode_requests(runtime, [_texts("a"), _texts(""), _texts("b")])
    assert isinstance(first, RuntimeError) and second is first
    assert isinstance(refused, RequestError)
