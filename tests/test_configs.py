"""Every generated config.pbtxt parses back into Triton's schema with the promised contract."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from model_repository import configs
from model_repository import contract as c

QUERY_INPUTS = {
    c.USER_ID: (mc.TYPE_INT64, [1], True),  # required; retrieve checks it (see configs.py)
    c.K: (mc.TYPE_INT32, [1], True),
    c.HISTORY: (mc.TYPE_INT64, [-1], True),
    c.EXCLUDE: (mc.TYPE_INT64, [-1], True),
    c.EXCLUDE_SEEN: (mc.TYPE_BOOL, [1], True),
    c.QUERY_TEXT: (mc.TYPE_STRING, [1], True),  # BYTES on the wire
}
QUERY_OUTPUTS = {
    c.ITEM_IDS: (mc.TYPE_INT64, [-1]),
    c.SCORES: (mc.TYPE_FP32, [-1]),
    c.VERSION: (mc.TYPE_INT64, [1]),
    c.ARM: (mc.TYPE_INT32, [1]),  # 0 the serving version's lineage, 1 a canary's
}


def _round_trip(tmp_path, config):
    configs.write_config(tmp_path / config.name, config)
    return configs.read_config(tmp_path / config.name)


@pytest.mark.parametrize("make", [configs.retrieve_config, configs.recommend_config])
def test_query_models_carry_the_wire_contract(tmp_path, make):
    config = _round_trip(tmp_path, make())
    assert config.max_batch_size == c.MAX_BATCH_SIZE
    got_inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    assert got_inputs == QUERY_INPUTS
    got_outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert got_outputs == QUERY_OUTPUTS


def test_retrieve_is_a_batched_python_model_with_ragged_lists(tmp_path):
    config = _round_trip(tmp_path, configs.retrieve_config(instances=2))
    assert config.backend == "python"
    assert config.instance_group[0].count == 2
    assert config.HasField("dynamic_batching")  # a zero delay must not turn batching off
    assert config.dynamic_batching.max_queue_delay_microseconds == configs.RETRIEVE_QUEUE_DELAY_US
    ragged = {i.name for i in config.input if i.allow_ragged_batch}
    assert ragged == {c.HISTORY, c.EXCLUDE}


def test_recommend_is_an_ensemble_mapping_every_tensor_to_retrieve(tmp_path):
    config = _round_trip(tmp_path, configs.recommend_config())
    assert config.platform == "ensemble"
    (step,) = config.ensemble_scheduling.step
    assert step.model_name == c.RETRIEVE
    assert dict(step.input_map) == {name: name for name in QUERY_INPUTS}
    assert dict(step.output_map) == {name: name for name in QUERY_OUTPUTS}


def test_one_user_tower_config_takes_every_tower_kind_and_size(tmp_path):
    config = _round_trip(tmp_path, configs.user_tower_config())
    assert config.backend == "python"
    assert {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input} == {
        c.USER_EMB: (mc.TYPE_FP32, [-1], False), c.HISTORY_EMB: (mc.TYPE_FP32, [-1], True),
        c.HISTORY_SEQ: (mc.TYPE_FP32, [-1, -1], True), c.HISTORY_MASK: (mc.TYPE_FP32, [-1], True)}
    assert [(o.name, list(o.dims)) for o in config.output] == [(c.QUERY, [-1])]
    # every version answers: a pushed base's tower beside the one older versions name
    assert config.version_policy.WhichOneof("policy_choice") == "all"


def test_text_encoder_takes_bytes_and_returns_unit_vectors_of_minilm_width(tmp_path):
    config = _round_trip(tmp_path, configs.text_encoder_config())
    assert config.backend == "python"
    assert config.max_batch_size == c.MAX_BATCH_SIZE
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        (c.TEXT, mc.TYPE_STRING, [1], False)]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        (c.TEXT_EMB, mc.TYPE_FP32, [c.TEXT_DIM])]
