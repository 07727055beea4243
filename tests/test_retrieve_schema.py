"""model_repository.retrieve_schema: the retrieve version's tables and typed meta."""

import numpy as np
import pytest

from exporter.towers import UserTower, load_tower, numpy_tower, save_tower
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.projection import TextProjection
from model_repository.tower import NumpyTower

DIM, USERS, ITEMS, HISTORY = 4, 3, 5, 6


def _tables(**overrides):
    rng = np.random.default_rng(0)
    tables = dict(user_ids=np.arange(USERS) + 100, item_ids=np.arange(ITEMS) + 500,
                  user_rows=rng.normal(size=(USERS, DIM)), item_rows=rng.normal(size=(ITEMS, DIM)),
                  user_history=np.full((USERS, HISTORY), -1), item_popularity=np.ones(ITEMS))
    tables.update(overrides)
    return schema.make_tables(**tables)


def test_make_tables_casts_to_the_schema_dtypes():
    projection = TextProjection(np.ones((7, DIM)), np.zeros(DIM))
    tables = schema.make_tables(
        user_ids=[1, 2], item_ids=[3], user_rows=np.zeros((2, DIM)), item_rows=np.zeros((1, DIM)),
        user_history=np.full((2, HISTORY), -1), item_popularity=[2],
        text_projection=projection.tables())
    assert {name: t.dtype.name for name, t in tables.items()} == {
        "user_ids": "int64", "item_ids": "int64", "user_rows": "float32", "item_rows": "float32",
        "user_history": "int64", "item_popularity": "float32", "text_projection": "float32",
        "text_projection_bias": "float32"}
    assert TextProjection.from_tables(tables).weight.shape == (7, DIM)


@pytest.mark.parametrize("name, bad, message", [
    ("item_popularity", np.ones(ITEMS - 1, np.float32), "item_popularity has 4 rows for 5 item_ids"),
    ("user_history", np.full((USERS + 1, HISTORY), -1), "user_history has 4 rows for 3 user_ids"),
])
def test_rows_that_disagree_with_their_ids_are_refused_by_name(name, bad, message):
    with pytest.raises(schema.SchemaError, match=message):
        _tables(**{name: bad})


def test_a_missing_or_mistyped_table_is_named():
    tables = _tables()
    del tables["item_rows"]
    with pytest.raises(schema.SchemaError, match="table item_rows is missing"):
        schema.check_tables(tables, where="v7")
    tables = {**_tables(), "user_ids": np.arange(USERS, dtype=np.int32)}
    with pytest.raises(schema.SchemaError, match="v7: table user_ids is int32, expected int64"):
        schema.check_tables(tables, where="v7")


def test_meta_round_trips_through_a_manifest(tmp_path):
    meta = schema.RetrieveMeta(dim=DIM, history_len=HISTORY, recency_decay=0.5,
                               text_encoder_version=3, text_weight=0.25,
                               tower=schema.TOWER_SEQUENCE)
    path = versions.write_version(tmp_path / "retrieve", 1, _tables(), meta=meta.to_dict())
    assert schema.RetrieveMeta.from_manifest(versions.read_manifest(path)) == meta


def test_meta_of_a_hand_written_version_comes_from_its_tables(tmp_path):
    path = versions.write_version(tmp_path / "retrieve", 1, _tables(),
                                  meta={"recency_decay": 0.5, "a_newer_writers_key": 1})
    meta = schema.RetrieveMeta.from_manifest(versions.read_manifest(path))
    assert (meta.dim, meta.history_len, meta.recency_decay) == (DIM, HISTORY, 0.5)
    assert meta.tower == schema.TOWER_POOLED  # a version from before the sequence tower
    assert meta.text_encoder_version is None and "text_encoder_version" not in meta.to_dict()


@pytest.mark.parametrize("field, value", [("dim", 0), ("history_len", 2.5), ("recency_decay", 0.0),
                                          ("text_weight", -1.0), ("text_encoder_version", 0),
                                          ("tower", "bag-of-words")])
def test_bad_meta_is_refused_naming_the_field(field, value):
    with pytest.raises(schema.SchemaError, match=field):
        schema.RetrieveMeta(**{"dim": DIM, "history_len": HISTORY, field: value})


def test_meta_dim_that_disagrees_with_the_tables_is_refused(tmp_path):
    path = versions.write_version(tmp_path / "retrieve", 1, _tables(),
                                  meta={"dim": DIM + 1, "history_len": HISTORY})
    with pytest.raises(schema.SchemaError, match="meta dim 5"):
        schema.RetrieveMeta.from_manifest(versions.read_manifest(path))


def test_the_tower_file_reads_as_the_same_numpy_tower(tmp_path):
    tower = UserTower(DIM)
    path = save_tower(tower, tmp_path / "tower.pt")
    from_file, direct = NumpyTower.from_file(path), numpy_tower(load_tower(path))
    for name, table in direct.tables().items():
        np.testing.assert_array_equal(from_file.tables()[name], table, err_msg=name)


def test_the_updater_trains_through_the_tables_tower_or_else_the_user_tower_file(tmp_path):
    from model_repository import contract as c
    from model_repository.tower import TOWER_FILE
    from updater.engine import version_tower

    tower = UserTower(DIM)
    (tmp_path / c.USER_TOWER / "3").mkdir(parents=True)
    save_tower(tower, tmp_path / c.USER_TOWER / "3" / TOWER_FILE)
    want = numpy_tower(tower).tables()
    meta = schema.RetrieveMeta(dim=DIM, history_len=HISTORY, user_tower_version=3)
    from_file = version_tower(_tables(), tmp_path, meta)  # no tower tables: the file
    from_tables = version_tower({**_tables(), **want}, tmp_path / "absent", meta)
    for name, table in want.items():
        np.testing.assert_array_equal(from_file.tables()[name], table, err_msg=name)
        np.testing.assert_array_equal(from_tables.tables()[name], table, err_msg=name)


def test_the_updater_trains_through_a_sequence_versions_own_tower(tmp_path):
    from exporter.sequence_tower import SequenceTower
    from model_repository.sequence_tower import NumpySequenceTower
    from updater.engine import version_tower

    want = numpy_tower(SequenceTower(DIM, length=HISTORY)).tables()
    meta = schema.RetrieveMeta(dim=DIM, history_len=HISTORY, tower=schema.TOWER_SEQUENCE)
    got = version_tower({**_tables(), **want}, tmp_path / "absent", meta)
    assert isinstance(got, NumpySequenceTower)
    for name, table in want.items():
        np.testing.assert_array_equal(got.tables()[name], table, err_msg=name)
    with pytest.raises(schema.SchemaError, match="sequence-tower version without its tables"):
        version_tower(_tables(), tmp_path / "absent", meta)  # never the pooled tower's file
