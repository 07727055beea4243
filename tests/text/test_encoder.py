"""The exported MiniLM against torch, and the server-side tokenizer against transformers'."""

import numpy as np
import pytest
import torch

from exporter.onnx_export import ParityError, build_tensorrt_plan
from exporter.text_encoder import (
    DEFAULT_TEXT_PARITY_ATOL,
    PLAN_SHAPES,
    check_text_parity,
    model_folder,
    tokenizer_file,
)
from model_repository import contract as c
from model_repository.serving import RequestError
from model_repository.text_encoding import TextEncoderRuntime
from tests.fixtures.tensorrt import needs_tensorrt

# lengths 1..~60 word pieces in one padded batch, plus batch sizes 1 and 3: both axes dynamic
TEXTS = [
    "x", "space opera", "Galaxy Orbit Rocket Nebula", "ÜNÏCÖDÉ títlé — naïve café 東京",
    " ".join(["a long sentence about detectives, murders and a heist in the rain"] * 5),
]


@pytest.fixture(scope="module")
def runtime(text_build):
    return TextEncoderRuntime.from_version(text_build.repository / c.TEXT_ENCODER / "1")


def test_build_checked_parity_within_the_tolerance(text_build):
    assert text_build.text_parity_max_abs_err is not None
    assert text_build.text_parity_max_abs_err <= DEFAULT_TEXT_PARITY_ATOL


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[:1], TEXTS[2:]], ids=["mixed-5", "one", "three"])
def test_onnx_matches_torch_on_the_same_token_ids(text_build, torch_encoder, texts):
    onnx_path = text_build.repository / c.TEXT_ENCODER / "1" / "model.onnx"
    worst = check_text_parity(torch_encoder, onnx_path, tokenizer_path=tokenizer_file(), texts=texts)
    assert worst <= DEFAULT_TEXT_PARITY_ATOL


def test_parity_check_names_the_worst_text_when_it_fails(text_build, torch_encoder):
    onnx_path = text_build.repository / c.TEXT_ENCODER / "1" / "model.onnx"
    with pytest.raises(ParityError, match="max \\|onnx - torch\\|"):
        check_text_parity(torch_encoder, onnx_path, tokenizer_path=tokenizer_file(), texts=TEXTS,
                          atol=-1.0)  # every difference is above a negative atol


def test_embeddings_are_unit_vectors_of_minilm_width(runtime):
    emb = runtime.encode(TEXTS)
    assert emb.shape == (len(TEXTS), c.TEXT_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_an_embedding(runtime):
    alone = runtime.encode(["space opera"])
    padded = runtime.encode(["space opera", TEXTS[-1]])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_server_tokenizer_matches_transformers(runtime):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(model_folder()), local_files_only=True)
    for text in TEXTS:
        ids, mask = runtime.tokenize([text])
        assert ids[0][mask[0] == 1].tolist() == reference(text)["input_ids"], text


def test_torch_encoder_matches_sentence_transformers_pooling(torch_encoder, runtime):
    """Mean over real tokens then L2, the all-MiniLM-L6-v2 recipe, computed by hand."""
    ids, mask = runtime.tokenize(["space opera"])
    with torch.no_grad():
        hidden = torch_encoder.bert(input_ids=torch.from_numpy(ids),
                                    attention_mask=torch.from_numpy(mask)).last_hidden_state[0]
        want = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
    np.testing.assert_allclose(runtime.encode(["space opera"])[0], want, atol=1e-5)


def test_the_word_piece_limit_is_an_error_naming_the_field_not_a_truncation(runtime):
    at_limit = " ".join(["galaxy"] * (c.MAX_TEXT_TOKENS - 2))  # + [CLS] and [SEP]
    assert runtime.encode([at_limit]).shape == (1, c.TEXT_DIM)
    with pytest.raises(RequestError, match="QUERY_TEXT is too long: 257 word pieces, the limit is 256"):
        runtime.tokenize([at_limit + " galaxy"], field=c.QUERY_TEXT)


@needs_tensorrt
def test_tensorrt_plan_of_the_text_encoder_is_written(text_build, tmp_path):
    onnx_path = text_build.repository / c.TEXT_ENCODER / "1" / "model.onnx"
    plan = build_tensorrt_plan(onnx_path, tmp_path / "model.plan", profile_shapes=PLAN_SHAPES)
    assert plan is not None and plan.stat().st_size > 0
