"""The on-disk version format: the one module that reads, writes, verifies and publishes versions.

A model's folder in a Triton repository holds numbered version folders. Each is self-describing:

    <model>/<N>/manifest.json     format, version, parent, created_at, feedback_offset, meta,
                                  tables {name: shape, dtype, shards [{file, rows, sha256}]},
                                  files {name: sha256}, and, once the version is superseded,
                                  quality (its record while it served; optional)
    <model>/<N>/tables/<name>.<i>.npy   row shards of each table (np.load(mmap_mode="r") ready)
    <model>/<N>/<file>            other files of the version (model.py, model.onnx, ...)

A version becomes visible by one atomic rename of a fully written and fsynced temporary folder,
so a reader (Triton included) never sees a half-written version. Shards of a table whose rows did
not change are hard-linked from the parent version, so publishing costs O(rows changed).

Everything in a version is immutable except one optional manifest field, ``quality``: what the
version's answers scored while it served (updater.quality), known only once it is superseded and
written then by `write_quality`. The manifest is in no checksum list (checksums cover shards and
files), so adding the field leaves the version verifying as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
TABLES_DIR = "tables"
DEFAULT_SHARD_ROWS = 1 << 18
_TMP_PREFIX = ".tmp-"
_FAILED_PREFIX = ".failed-"


class VersionError(Exception):
    """A version folder is missing, malformed, or fails verification."""


@dataclass(frozen=True)
class Shard:
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class TableSpec:
    shape: tuple[int, ...]
    dtype: str
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class Manifest:
    version: int
    parent: int | None
    created_at: float
    feedback_offset: int
    tables: dict[str, TableSpec] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    quality: dict | None = None  # the record of its answers while it served (write_quality)

    def to_json(self) -> str:
        quality = {} if self.quality is None else {"quality": self.quality}
        return json.dumps(
            {
                **quality,
                "format": FORMAT,
                "version": self.version,
                "parent": self.parent,
                "created_at": self.created_at,
                "feedback_offset": self.feedback_offset,
                "meta": self.meta,
                "files": self.files,
                "tables": {
                    name: {
                        "shape": list(spec.shape),
                        "dtype": spec.dtype,
                        "shards": [vars(s) for s in spec.shards],
                    }
                    for name, spec in self.tables.items()
                },
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise VersionError(f"{where}: unsupported format {raw.get('format')!r}")
            tables = {
                name: TableSpec(
                    shape=tuple(int(x) for x in spec["shape"]),
                    dtype=str(spec["dtype"]),
                    shards=tuple(Shard(**s) for s in spec["shards"]),
                )
                for name, spec in raw["tables"].items()
            }
            return cls(
                version=int(raw["version"]),
                parent=None if raw["parent"] is None else int(raw["parent"]),
                created_at=float(raw["created_at"]),
                feedback_offset=int(raw["feedback_offset"]),
                tables=tables,
                files=dict(raw.get("files", {})),
                meta=dict(raw.get("meta", {})),
                quality=None if raw.get("quality") is None else dict(raw["quality"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VersionError(f"{where}: malformed manifest: {exc}") from exc


def list_versions(model_dir: Path) -> list[int]:
    """Published version numbers in a model folder, ascending (temporary folders excluded)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = []
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit() and (entry / MANIFEST).is_file():
            found.append(int(entry.name))
    return sorted(found)


def latest_version(model_dir: Path) -> int | None:
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def read_manifest(version_dir: Path) -> Manifest:
    path = Path(version_dir) / MANIFEST
    try:
        text = path.read_text()
    except OSError as exc:
        raise VersionError(f"{path}: cannot read manifest: {exc}") from exc
    return Manifest.from_json(text, where=str(path))


def write_quality(version_dir: Path, quality: dict) -> Manifest:
    """Put ``quality`` (a JSON-ready dict) into a published version's manifest, replacing any
    earlier one; nothing else changes. Atomic: the new manifest is written to a temporary file
    beside it and fsynced, renamed over it, and the folder fsynced, so a reader (the running
    retrieve, recovery) sees the old manifest or the new one, never half of either. Returns the
    new manifest. Raises VersionError when the version's manifest cannot be read."""
    version_dir = Path(version_dir)
    manifest = replace(read_manifest(version_dir), quality=dict(quality))
    tmp = version_dir / f"{_TMP_PREFIX}{MANIFEST}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "w") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, version_dir / MANIFEST)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # fsync the folder after the rename, or a crash can bring the old manifest back
    _fsync_path(version_dir)
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def _shard_bounds(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    if rows == 0:
        return [(0, 0)]
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]


def write_version(
    model_dir: Path,
    version: int,
    tables: dict[str, np.ndarray],
    *,
    files: dict[str, Path] | None = None,
    parent: int | None = None,
    feedback_offset: int = 0,
    meta: dict | None = None,
    changed_rows: dict[str, np.ndarray] | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    shard_bytes: int | None = None,
    timings: dict[str, float] | None = None,
    before_rename: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete version and make it visible with one atomic rename.

    tables: name -> array, split into row shards of ``shard_rows``.
    files: name in the version folder -> source path (copied).
    changed_rows: with ``parent``, name -> row indices that differ from the parent's table of the
        same shape and dtype; shards holding none of them are hard-linked from the parent.
        A table not named here is written in full.
    shard_bytes: if given, each table's shard holds as many rows as fit in this many bytes
        (at least one), instead of ``shard_rows``: narrow tables (ids, accumulators) then get
        as few shards as wide ones, which keeps a sparse publish's link and manifest work small.
    timings: if given, receives "write_s" (shards, files, manifest, fsyncs) and "rename_s" (the
        rename and the fsync of the model folder), in seconds.
    before_rename: called with the complete, fsynced temporary folder just before the rename
        (fault injection in crash tests; a crash there must leave nothing visible).
    Returns the published version folder. Raises VersionError if it exists already.
    """
    started = time.perf_counter()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    if final.exists():
        raise VersionError(f"{final} exists already; versions are immutable")
    tmp = model_dir / f"{_TMP_PREFIX}{version}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    if tables:
        (tmp / TABLES_DIR).mkdir()
    parent_manifest = read_manifest(model_dir / str(parent)) if parent is not None else None
    try:
        specs = {}
        for name, array in tables.items():
            array = np.asarray(array)
            rows_per_shard = shard_rows if shard_bytes is None else _rows_for_bytes(array, shard_bytes)
            reusable = _reusable_shards(parent_manifest, name, array, changed_rows, rows_per_shard)
            shards = []
            for index, (start, stop) in enumerate(_shard_bounds(array.shape[0], rows_per_shard)):
                file = f"{TABLES_DIR}/{name}.{index:04d}.npy"
                if index in reusable:
                    # unchanged rows: a hard link costs nothing and keeps the parent's checksum
                    os.link(model_dir / str(parent) / file, tmp / file)
                    shards.append(reusable[index])
                    continue
                _write_npy(tmp / file, array[start:stop])
                shards.append(Shard(file=file, rows=stop - start, sha256=_sha256(tmp / file)))
            specs[name] = TableSpec(shape=array.shape, dtype=array.dtype.str, shards=tuple(shards))
        file_sums = {}
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
            _fsync_path(tmp / name)
            file_sums[name] = _sha256(tmp / name)
        manifest = Manifest(
            version=version,
            parent=parent,
            created_at=time.time(),
            feedback_offset=feedback_offset,
            tables=specs,
            files=file_sums,
            meta=dict(meta or {}),
        )
        with open(tmp / MANIFEST, "w") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        if tables:
            _fsync_path(tmp / TABLES_DIR)
        _fsync_path(tmp)
        if before_rename is not None:
            before_rename(tmp)
        renaming = time.perf_counter()
        os.rename(tmp, final)
        # fsync the parent folder after rename, or a crash can forget the new version
        _fsync_path(model_dir)
        if timings is not None:
            timings["write_s"] = renaming - started
            timings["rename_s"] = time.perf_counter() - renaming
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("published %s", final)
    return final


def _rows_for_bytes(array: np.ndarray, shard_bytes: int) -> int:
    row_bytes = max(1, array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    return max(1, shard_bytes // row_bytes)


def _reusable_shards(
    parent: Manifest | None,
    name: str,
    array: np.ndarray,
    changed_rows: dict[str, np.ndarray] | None,
    shard_rows: int,
) -> dict[int, Shard]:
    """Shard index -> parent shard, for shards whose rows are unchanged since the parent."""
    if parent is None or changed_rows is None or name not in changed_rows:
        return {}
    spec = parent.tables.get(name)
    if spec is None or spec.dtype != array.dtype.str or spec.shape[1:] != array.shape[1:]:
        return {}
    dirty = {int(row) // shard_rows for row in np.asarray(changed_rows[name]).ravel()}
    reusable = {}
    for index, (start, stop) in enumerate(_shard_bounds(array.shape[0], shard_rows)):
        if index >= len(spec.shards) or index in dirty:
            continue
        shard = spec.shards[index]
        if shard.rows == stop - start:
            reusable[index] = shard
    return reusable


def verify_version(version_dir: Path, *, trusted_parent: Path | None = None) -> Manifest:
    """Check every shard and file against the manifest's checksums and shapes.

    trusted_parent: a version folder verified already; shards that are hard links of its shards
    (same inode) are trusted instead of checksummed, so a publish's verify costs O(rows changed).
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    if manifest.version != int(version_dir.name):
        raise VersionError(f"{version_dir}: manifest says version {manifest.version}")
    for name, spec in manifest.tables.items():
        if sum(s.rows for s in spec.shards) != spec.shape[0]:
            raise VersionError(f"{version_dir}: table {name}: shard rows do not add up")
        for shard in spec.shards:
            mine = version_dir / shard.file
            try:
                if trusted_parent is not None:
                    theirs = Path(trusted_parent) / shard.file
                    if theirs.exists() and os.stat(mine).st_ino == os.stat(theirs).st_ino:
                        continue
                if _sha256(mine) != shard.sha256:
                    raise VersionError(f"{version_dir}: {shard.file}: checksum mismatch")
            except OSError as exc:
                raise VersionError(f"{version_dir}: {shard.file}: {exc}") from exc
    for name, digest in manifest.files.items():
        if _sha256(version_dir / name) != digest:
            raise VersionError(f"{version_dir}: {name}: checksum mismatch")
    return manifest


def load_table(version_dir: Path, manifest: Manifest, name: str) -> np.ndarray:
    """A table as one array: the memory map itself for a single shard, else a concatenation."""
    try:
        spec = manifest.tables[name]
    except KeyError:
        raise VersionError(f"{version_dir}: no table {name!r}") from None
    parts = [np.load(Path(version_dir) / s.file, mmap_mode="r") for s in spec.shards]
    table = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if table.shape != spec.shape or table.dtype.str != spec.dtype:
        raise VersionError(
            f"{version_dir}: table {name}: found {table.shape} {table.dtype.str}, "
            f"manifest says {spec.shape} {spec.dtype}"
        )
    return table


def load_tables(version_dir: Path) -> tuple[Manifest, dict[str, np.ndarray]]:
    manifest = read_manifest(version_dir)
    return manifest, {name: load_table(version_dir, manifest, name) for name in manifest.tables}


def remove_stale_temporaries(model_dir: Path) -> list[Path]:
    """Delete half-written temporary folders a crash left behind; returns what was removed."""
    removed = []
    model_dir = Path(model_dir)
    if model_dir.is_dir():
        for entry in model_dir.iterdir():
            if entry.name.startswith(_TMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def verify_new_shards(version_dir: Path, parent_dir: Path) -> Manifest:
    """`verify_version` trusting hard links of an already verified parent: O(rows changed)."""
    return verify_version(version_dir, trusted_parent=parent_dir)


def written_shards(version_dir: Path, parent_dir: Path) -> list[Path]:
    """Shard files of a version that are not hard links of its parent's (written for it)."""
    version_dir, parent_dir = Path(version_dir), Path(parent_dir)
    found = []
    for spec in read_manifest(version_dir).tables.values():
        for shard in spec.shards:
            mine, theirs = version_dir / shard.file, parent_dir / shard.file
            if theirs.exists() and os.stat(mine).st_ino == os.stat(theirs).st_ino:
                continue
            found.append(mine)
    return found


def quarantine_version(model_dir: Path, version: int) -> Path:
    """Move a published version out of the numbered namespace (to `.failed-<N>-<ns>`), so Triton
    never loads it and no later scan lists it. Atomic: one rename, then an fsync of the folder."""
    model_dir = Path(model_dir)
    target = model_dir / f"{_FAILED_PREFIX}{version}-{time.time_ns()}"
    os.rename(model_dir / str(version), target)
    _fsync_path(model_dir)
    log.warning("quarantined version %s of %s as %s", version, model_dir, target.name)
    return target


def list_quarantined(model_dir: Path) -> list[tuple[int, Path]]:
    """(version, folder) of quarantined versions, ascending."""
    model_dir = Path(model_dir)
    found = []
    if model_dir.is_dir():
        for entry in model_dir.iterdir():
            if entry.name.startswith(_FAILED_PREFIX):
                number = entry.name[len(_FAILED_PREFIX):].split("-", 1)[0]
                if number.isdigit():
                    found.append((int(number), entry))
    return sorted(found)


def next_version_number(model_dir: Path) -> int:
    """One past every version number ever used here, quarantined ones included, so a number is
    never reused for different contents."""
    used = list_versions(model_dir) + [v for v, _ in list_quarantined(model_dir)]
    return max(used, default=0) + 1


def remove_quarantined(path: Path) -> None:
    """Delete a quarantined folder (from list_quarantined), atomically out of sight first."""
    path = Path(path)
    if not path.name.startswith(_FAILED_PREFIX):
        raise VersionError(f"{path} is not a quarantined version folder")
    doomed = path.parent / f"{_TMP_PREFIX}gc-{path.name.lstrip('.')}-{time.monotonic_ns()}"
    os.rename(path, doomed)
    _fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_version(model_dir: Path, version: int) -> None:
    """Delete a published version: renamed to a temporary name first (atomic disappearance; a
    crash mid-delete leaves a temporary that remove_stale_temporaries cleans), then removed."""
    model_dir = Path(model_dir)
    doomed = model_dir / f"{_TMP_PREFIX}gc-{version}-{time.monotonic_ns()}"
    os.rename(model_dir / str(version), doomed)
    _fsync_path(model_dir)
    shutil.rmtree(doomed, ignore_errors=True)
