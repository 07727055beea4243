"""What the publisher adds to the version format: quarantine, numbering, removal, cheap verify."""

import numpy as np
import pytest

from model_repository import versions


def _write(model, version, rows, *, parent=None, changed=None):
    tables = {"rows": rows, "ids": np.arange(len(rows), dtype=np.int64)}
    changed_rows = None if changed is None else {"rows": np.array(changed), "ids": np.array([], int)}
    return versions.write_version(model, version, tables, parent=parent, changed_rows=changed_rows,
                                  shard_rows=4)


def test_quarantined_versions_leave_the_namespace_and_numbers_are_not_reused(tmp_path):
    rows = np.ones((10, 3), np.float32)
    _write(tmp_path, 1, rows)
    _write(tmp_path, 2, rows)
    moved = versions.quarantine_version(tmp_path, 2)
    assert versions.list_versions(tmp_path) == [1]
    assert versions.list_quarantined(tmp_path) == [(2, moved)]
    assert versions.next_version_number(tmp_path) == 3
    versions.remove_version(tmp_path, 1)
    assert versions.list_versions(tmp_path) == [] and not (tmp_path / "1").exists()
    versions.remove_quarantined(moved)
    assert versions.list_quarantined(tmp_path) == [] and not moved.exists()
    assert versions.remove_stale_temporaries(tmp_path) == []  # nothing half-deleted left
    with pytest.raises(versions.VersionError, match="not a quarantined"):
        versions.remove_quarantined(tmp_path / "config.pbtxt")


def test_verify_new_shards_checks_what_was_written_and_trusts_links(tmp_path):
    rows = np.arange(36, dtype=np.float32).reshape(12, 3)
    _write(tmp_path, 1, rows)
    rows = rows.copy()
    rows[5] += 1
    v2 = _write(tmp_path, 2, rows, parent=1, changed=[5])
    written = versions.written_shards(v2, tmp_path / "1")
    assert [p.name for p in written] == ["rows.0001.npy"]
    versions.verify_new_shards(v2, tmp_path / "1")
    data = bytearray(written[0].read_bytes())
    data[-1] ^= 0xFF
    written[0].write_bytes(bytes(data))
    with pytest.raises(versions.VersionError, match="checksum"):
        versions.verify_new_shards(v2, tmp_path / "1")


def test_write_version_reports_timings_and_a_crash_before_rename_leaves_nothing(tmp_path):
    timings = {}
    versions.write_version(tmp_path, 1, {"t": np.zeros(3)}, timings=timings)
    assert set(timings) == {"write_s", "rename_s"}

    def crash(tmp):
        assert (tmp / versions.MANIFEST).is_file()  # complete and fsynced, not yet visible
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        versions.write_version(tmp_path, 2, {"t": np.zeros(3)}, before_rename=crash)
    assert versions.list_versions(tmp_path) == [1]
