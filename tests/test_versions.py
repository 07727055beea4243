"""The version format: round trip, hard-linked unchanged shards, atomic visibility, verification."""

import os

import numpy as np
import pytest

from model_repository import versions


def _tables(rows=10, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "rows": rng.normal(size=(rows, dim)).astype(np.float32),
        "ids": np.arange(rows, dtype=np.int64) + 100,
    }


def test_round_trip_keeps_shapes_dtypes_values_and_meta(tmp_path):
    tables = _tables(rows=10)
    path = versions.write_version(
        tmp_path / "m", 1, tables, meta={"dim": 4}, feedback_offset=7, shard_rows=4
    )
    manifest, loaded = versions.load_tables(path)
    assert manifest.version == 1 and manifest.feedback_offset == 7 and manifest.meta == {"dim": 4}
    assert [s.rows for s in manifest.tables["rows"].shards] == [4, 4, 2]
    for name, array in tables.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    assert versions.list_versions(tmp_path / "m") == [1]
    versions.verify_version(path)


def test_unchanged_shards_are_hard_links_of_the_parent(tmp_path):
    model = tmp_path / "m"
    tables = _tables(rows=12)
    v1 = versions.write_version(model, 1, tables, shard_rows=4)
    tables["rows"] = tables["rows"].copy()
    tables["rows"][5] += 1.0  # only shard 1 changes
    v2 = versions.write_version(
        model, 2, tables, parent=1, changed_rows={"rows": np.array([5]), "ids": np.array([], int)},
        shard_rows=4,
    )
    inode = lambda p: os.stat(p).st_ino  # noqa: E731
    shards1 = versions.read_manifest(v1).tables["rows"].shards
    shards2 = versions.read_manifest(v2).tables["rows"].shards
    linked = [inode(v1 / a.file) == inode(v2 / b.file) for a, b in zip(shards1, shards2)]
    assert linked == [True, False, True]
    ids_linked = inode(v1 / "tables/ids.0000.npy") == inode(v2 / "tables/ids.0000.npy")
    assert ids_linked
    np.testing.assert_array_equal(versions.load_tables(v2)[1]["rows"], tables["rows"])
    assert versions.read_manifest(v2).parent == 1
    versions.verify_version(v2)


def test_a_version_is_immutable_and_a_failed_write_leaves_nothing(tmp_path):
    model = tmp_path / "m"
    versions.write_version(model, 1, _tables())
    with pytest.raises(versions.VersionError, match="exists already"):
        versions.write_version(model, 1, _tables())
    with pytest.raises(FileNotFoundError):
        versions.write_version(model, 2, _tables(), files={"model.py": tmp_path / "missing.py"})
    assert versions.list_versions(model) == [1]
    assert sorted(p.name for p in model.iterdir()) == ["1"]


def test_verification_catches_a_corrupted_shard(tmp_path):
    path = versions.write_version(tmp_path / "m", 1, _tables())
    shard = path / versions.read_manifest(path).tables["rows"].shards[0].file
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(versions.VersionError, match="checksum mismatch"):
        versions.verify_version(path)


def test_half_written_temporaries_are_invisible_and_removable(tmp_path):
    model = tmp_path / "m"
    versions.write_version(model, 1, _tables())
    (model / ".tmp-2-123-456").mkdir()
    assert versions.list_versions(model) == [1]
    assert versions.latest_version(model) == 1
    removed = versions.remove_stale_temporaries(model)
    assert [p.name for p in removed] == [".tmp-2-123-456"]


def test_malformed_manifest_names_the_file(tmp_path):
    path = versions.write_version(tmp_path / "m", 1, _tables())
    (path / versions.MANIFEST).write_text('{"format": 1}')
    with pytest.raises(versions.VersionError, match="manifest.json: malformed manifest"):
        versions.read_manifest(path)
