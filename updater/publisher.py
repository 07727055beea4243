"""Publishing retrieve versions: write (O(rows changed)), verify, serve, probe, keep a few.

    write_version(parent=current, changed_rows)   unchanged shards hard-linked, one atomic rename
    verify_new_shards                             checksums of what was written
    serve                                         data only: the running retrieve switches to it
                                                  (model_repository.live_version); other code or
                                                  shapes: load_model("retrieve")
    probe                                         a recommend answered by exactly that version
    gc                                            keep the newest `keep_versions`, delete older

When a version is superseded, its quality record (updater.quality: the hit rate of its answers
while it served, beside its parent's) goes into its manifest and the last few stay for Status.

A version that fails any step is quarantined (renamed out of the numbered namespace, so Triton
never loads it again), Triton is asked to load again so it serves the last good version, and the
failure is kept for Status. Only this module talks to versions on the updater's side.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_repository import canary as canary_module
from model_repository import configs, templates, versions
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository.canary import CANARY, CanarySplit, arm_of, read_split
from model_repository.live_version import swap_blocker
from updater import faults
from updater.quality import QualityRecord
from updater.triton_control import TritonControl, TritonError

log = logging.getLogger(__name__)

MAX_RECORDS = 64
# the models retrieve calls by the version its meta names, and that meta's key for each
SIDE_MODELS = ((c.USER_TOWER, "user_tower_version"), (c.TEXT_ENCODER, "text_encoder_version"))
TOWER_ONNX_FILE = "model.onnx"
MAX_QUALITY_RECORDS = 8  # superseded versions' records Status shows


class PublishError(RuntimeError):
    """A version was written but not served; it is quarantined and reported in Status."""


@dataclass(frozen=True)
class PublishRecord:
    version: int
    feedback_offset: int
    started_at: float
    kind: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FailedVersion:
    version: int
    reason: str
    moved_to: str


class Publisher:
    def __init__(self, repository: Path, triton: TritonControl, *, keep_versions: int,
                 shard_bytes: int):
        self.repository = Path(repository)
        self.model_dir = self.repository / c.RETRIEVE
        self.triton = triton
        self.keep_versions = keep_versions
        self.shard_bytes = shard_bytes
        self.current: int | None = None  # the last good version, served by Triton
        self.canary: int | None = None  # a running canary's newest version (its own lineage)
        self._side_unchecked = True  # tower versions a crash may have left unreferenced
        self.records: list[PublishRecord] = []
        self.listeners: list = []  # called with each PublishRecord (updater.metrics)
        self.quality: list[QualityRecord] = []  # superseded versions' final records, newest last
        self.failed: list[FailedVersion] = []

    # -- recovery -------------------------------------------------------------------------
    def recover(self, split: CanarySplit | None = None) -> versions.Manifest:
        """Drop half-written folders, pick the newest version that verifies and answers
        (quarantining newer ones that do not), and make Triton serve it. Returns its manifest.
        ``split``: a canary that goes on; the probe asks one of the control's users."""
        for path in versions.remove_stale_temporaries(self.model_dir):
            log.warning("removed a half-written version folder left by a crash: %s", path.name)
        for version in reversed(versions.list_versions(self.model_dir)):
            version_dir = self.model_dir / str(version)
            try:
                if arm_of(versions.read_manifest(version_dir).meta) == CANARY:
                    continue  # a canary's lineage: never the control (engine.recover ends it)
                manifest = versions.verify_version(version_dir)
                started, timings = time.time(), {}
                ids = np.asarray(versions.load_table(version_dir, manifest, schema.USER_IDS))
                if split is not None:
                    ids = ids[~split.in_canary(ids)]
                probe_user = int(ids[0]) if len(ids) else 0
                answering = self.triton.answering_version(probe_user)
                self._serve(version, probe_user, timings, serving=answering)
            except versions.VersionError as exc:
                self._quarantine(version, f"verification failed on recovery: {exc}")
                continue
            except TritonError as exc:
                if not self.triton.is_live():
                    raise  # Triton is down: nothing to learn about the version
                self._quarantine(version, f"not served on recovery: {exc}")
                self._restore_serving()
                continue
            self.current = version
            self._record(version, manifest.feedback_offset, started, "recover", timings)
            return manifest
        raise PublishError(f"no retrieve version in {self.model_dir} verifies and serves")

    # -- publishing -----------------------------------------------------------------------
    def publish(self, tables: dict[str, np.ndarray], *, changed_rows: dict[str, np.ndarray] | None,
                feedback_offset: int, probe_user: int, kind: str = "publish",
                parent: int | None = None, meta: dict | None = None,
                split: CanarySplit | None = None) -> int:
        """Write, verify and serve a new version, then probe it; returns its number. `parent`
        defaults to the current version (a rollback passes its target), or with ``split`` (a
        canary's version: its meta says so) to the canary's newest; `meta` to the parent's (a
        push brings its base's). Raises PublishError on failure."""
        if parent is None:
            parent = self.canary if split is not None and self.canary is not None else self.current
        parent_dir = self.model_dir / str(parent)
        meta = versions.read_manifest(parent_dir).meta if meta is None else meta
        version = versions.next_version_number(self.model_dir)
        started = time.time()
        timings: dict[str, float] = {}
        versions.write_version(
            self.model_dir, version, tables, parent=parent, feedback_offset=feedback_offset,
            meta=meta, changed_rows=changed_rows, shard_bytes=self.shard_bytes, timings=timings,
            files={"model.py": templates.template(c.RETRIEVE)},
            before_rename=lambda _tmp: faults.crash_point("before_rename"),
        )
        faults.crash_point("after_rename")
        version_dir = self.model_dir / str(version)
        if faults.take_fault("corrupt_once"):
            _corrupt_a_new_shard(version_dir, parent_dir)
        try:
            t0 = time.perf_counter()
            versions.verify_new_shards(version_dir, parent_dir)
            timings["verify_s"] = time.perf_counter() - t0
            if split is None:
                self._serve(version, probe_user, timings, serving=self.current)
            else:  # the running retrieve opens it for the canary's users itself
                if read_split(self.model_dir) != split:
                    canary_module.write_split(self.model_dir, split)
                t0 = time.perf_counter()
                self.triton.probe(version, probe_user)
                timings["swap_s"] = time.perf_counter() - t0
            faults.crash_point("after_load")  # served, not yet recorded as the current version
        except (versions.VersionError, TritonError) as exc:
            if isinstance(exc, TritonError) and not self.triton.is_live():
                # not the version's fault: it stays on disk, Triton loads the newest when back
                raise PublishError(f"Triton is unreachable; version {version} not loaded: {exc}") from exc
            loaded = "load_s" in timings
            self._quarantine(version, str(exc))
            if loaded:  # Triton runs the bad version's code: back to the last good one
                self._restore_serving()
            raise PublishError(f"version {version} not served: {exc}") from exc
        if split is None:
            self.current = version
        else:
            self.canary = version
        self._record(version, feedback_offset, started, kind, timings)
        self.collect_garbage()
        log.info("published retrieve %s (offset %s, %s): %s", version, feedback_offset, kind,
                 {k: round(v, 4) for k, v in timings.items()})
        return version

    def _serve(self, version: int, probe_user: int, timings: dict[str, float], *,
               serving: int | None) -> None:
        """Make `version` answer, then check that it does. A data-only successor of the
        version answering now (`serving`) is switched to inside the running retrieve model
        (model_repository.live_version): no Triton reload, so no reload of the ensemble over it
        either. Anything else (other code, another embedding size, nothing answering) goes
        through Triton's load_model. Raises VersionError or TritonError."""
        blocker = "no version answers" if serving is None else None
        if serving == version:
            blocker = None
        elif serving is not None:
            try:
                blocker = swap_blocker(versions.read_manifest(self.model_dir / str(serving)),
                                       versions.read_manifest(self.model_dir / str(version)))
            except versions.VersionError as exc:
                blocker = f"the answering version {serving} is unreadable ({exc})"
        if blocker is not None:
            log.info("loading retrieve %s in Triton: %s", version, blocker)
            t0 = time.perf_counter()
            self.triton.load(c.RETRIEVE)
            timings["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.triton.probe(version, probe_user)  # data-only: waits for the switch
        timings["probe_s" if blocker is not None else "swap_s"] = time.perf_counter() - t0

    def _restore_serving(self) -> None:
        """After a quarantine the newest numbered version is the last good one: reload it."""
        try:
            self.triton.load(c.RETRIEVE)
        except TritonError as exc:
            log.error("reloading the last good version %s failed: %s", self.current, exc)

    def _quarantine(self, version: int, reason: str) -> None:
        moved = versions.quarantine_version(self.model_dir, version)
        self.failed.append(FailedVersion(version, reason, moved.name))
        log.error("version %s quarantined: %s", version, reason)

    def _record(self, version, offset, started, kind, timings) -> None:
        record = PublishRecord(version, offset, started, kind, dict(timings))
        self.records.append(record)
        del self.records[:-MAX_RECORDS]
        for listener in self.listeners:
            listener(record)

    def keep_quality(self, record: QualityRecord) -> QualityRecord:
        """A superseded version's final record, its parent's hit rate beside it: written into
        the version's manifest (unless the version is gone: collected or forgotten) and kept
        for Status. Returns it."""
        record = self.against_parent(record)
        version_dir = self.model_dir / str(record.version)
        if version_dir.is_dir():
            try:
                versions.write_quality(version_dir, record.to_dict())
            except (versions.VersionError, OSError) as exc:
                log.error("the quality record of version %s was not written: %s", record.version, exc)
        self.quality.append(record)
        del self.quality[:-MAX_QUALITY_RECORDS]
        return record

    def against_parent(self, record: QualityRecord) -> QualityRecord:
        """``record`` with its parent's final hit rate beside it: from the records kept here,
        else the parent's manifest (after a restart), else none."""
        if record.parent is None:
            return record.against(None)
        for kept in reversed(self.quality):
            if kept.version == record.parent:
                return record.against(kept)
        try:
            raw = versions.read_manifest(self.model_dir / str(record.parent)).quality
        except versions.VersionError:
            raw = None
        return record.against(QualityRecord.from_dict(raw) if raw else None)

    def kept_versions(self) -> list[int]:
        return versions.list_versions(self.model_dir)

    def collect_garbage(self) -> list[int]:
        """Delete all but the newest `keep_versions` versions (never the current one), then the
        user_tower and text_encoder versions no kept retrieve version names."""
        kept = self.kept_versions()
        doomed = [v for v in kept[: max(0, len(kept) - self.keep_versions)]
                  if v not in (self.current, self.canary)]
        for version in doomed:
            versions.remove_version(self.model_dir, version)
        # side versions lose their last reference only with retrieve versions (or a crash
        # mid-push, before this process): not looked at on every publish
        if doomed or self._side_unchecked:
            self._side_unchecked = False
            self._collect_side_versions()
        return doomed

    # -- pushed bases (issue 28) ----------------------------------------------------------
    def install_side_versions(self, pushed: PushedBase) -> dict:
        """The pushed base's user_tower (and text_encoder) as versions of this repository's,
        unless one here has the same files; each new one loaded by Triton beside the versions
        older retrieve versions name. Returns the pushed retrieve meta naming them."""
        meta = dict(pushed.manifest.meta)
        serving = versions.read_manifest(self.model_dir / str(self.current)).meta
        for model, key in SIDE_MODELS:
            source = pushed.side.get(model)
            if source is None:
                meta.pop(key, None)
                continue
            model_dir = self.repository / model
            number = _same_files(model_dir, source.files, prefer=serving.get(key))
            if number is None:
                number = versions.next_version_number(model_dir)
                versions.write_version(
                    model_dir, number, {}, meta=source.meta,
                    files={name: pushed.repository / model / "1" / name for name in source.files})
                config = configs.read_config(pushed.repository / model)
                if (not (model_dir / configs.CONFIG_FILE).is_file()
                        or configs.read_config(model_dir) != config):
                    configs.write_config(model_dir, config)  # older builds: one tower size only
                log.info("push: %s version %s written; loading it beside the others", model, number)
                self.triton.load(model)
            meta[key] = number
        return meta

    def _collect_side_versions(self) -> None:
        """user_tower / text_encoder versions that no kept retrieve version names go (Triton
        serves every version folder of those, so an unneeded one is loaded for nothing)."""
        for model, key in SIDE_MODELS:
            model_dir = self.repository / model
            numbers = versions.list_versions(model_dir)
            if len(numbers) < 2:
                continue
            named = set()
            for version in self.kept_versions():
                try:
                    named.add(versions.read_manifest(self.model_dir / str(version)).meta.get(key))
                except versions.VersionError:
                    return  # unreadable: keep everything rather than guess
            doomed = [n for n in numbers if n not in named]
            for number in doomed:
                versions.remove_version(model_dir, number)
            if doomed:
                log.info("%s versions %s named by no kept retrieve version: removed", model, doomed)
                try:
                    self.triton.load(model)  # Triton lets go of the removed ones
                except TritonError as exc:
                    log.warning("%s reload after removing old versions failed: %s", model, exc)

    def previous_version(self) -> int | None:
        older = [v for v in self.kept_versions() if self.current is not None and v < self.current]
        return older[-1] if older else None

    def load_tables(self, version: int) -> tuple[versions.Manifest, dict[str, np.ndarray]]:
        return versions.load_tables(self.model_dir / str(version))

    def recover_canary(self, split: CanarySplit) -> versions.Manifest | None:
        """The running canary's newest version that verifies (its lineage: first_version and
        newer, meta arm canary), which retrieve serves its users; None when there is none."""
        for version in reversed(versions.list_versions(self.model_dir)):
            if version < split.first_version:
                return None
            version_dir = self.model_dir / str(version)
            try:
                if arm_of(versions.read_manifest(version_dir).meta) != CANARY:
                    continue
                manifest = versions.verify_version(version_dir)
            except versions.VersionError as exc:
                log.error("canary version %s does not verify: %s", version, exc)
                continue
            self.canary = version
            return manifest
        return None

    def end_canary(self) -> None:
        """Every user back on the control lineage (the canary's versions stay until collected)."""
        canary_module.remove_split(self.model_dir)
        self.canary = None

    def remove_versions_holding_user(self, user_id: int) -> list[int]:
        """Delete every kept version except the current one, and every quarantined folder, whose
        user_ids hold `user_id`. Returns the numbers of the kept versions removed."""
        removed = []
        for version in self.kept_versions():
            if (version not in (self.current, self.canary)
                    and _holds_user(self.model_dir / str(version), user_id)):
                versions.remove_version(self.model_dir, version)
                removed.append(version)
        for _, path in versions.list_quarantined(self.model_dir):
            if _holds_user(path, user_id):
                versions.remove_quarantined(path)
        return removed


@dataclass(frozen=True)
class PushedBase:
    """A `freshrec build` output checked in full: its retrieve version 1 (manifest, meta,
    tables) and the user_tower / text_encoder version 1 manifests beside it."""

    repository: Path
    manifest: versions.Manifest
    meta: schema.RetrieveMeta
    tables: dict[str, np.ndarray]
    side: dict[str, versions.Manifest]


def read_pushed_base(repository: Path) -> PushedBase:
    """Verify a build's repository as a push takes it: every version 1 checksummed, the retrieve
    tables and meta by the schema, a user_tower with its ONNX graph. Raises VersionError (a
    SchemaError for the schema) naming what is wrong."""
    repository = Path(repository)
    version_dir = repository / c.RETRIEVE / "1"
    manifest = versions.verify_version(version_dir)
    meta = schema.RetrieveMeta.from_manifest(manifest)
    _, tables = versions.load_tables(version_dir)
    tables = {name: np.asarray(t) for name, t in tables.items()}
    schema.check_tables(tables, where=str(version_dir))
    if meta.dim != tables[schema.ITEM_ROWS].shape[1]:
        raise schema.SchemaError(f"{version_dir}: meta dim {meta.dim} but item rows of width "
                                 f"{tables[schema.ITEM_ROWS].shape[1]}")
    side = {}
    for model, key in SIDE_MODELS:
        side_dir = repository / model / "1"
        if not side_dir.is_dir():
            if model == c.USER_TOWER:
                raise versions.VersionError(f"{repository}: no {c.USER_TOWER}/1")
            if getattr(meta, key) is not None:
                raise versions.VersionError(f"{repository}: its retrieve meta names {model} "
                                            f"version {getattr(meta, key)}, but there is no {model}/1")
            continue
        side[model] = versions.verify_version(side_dir)
        if not (repository / model / configs.CONFIG_FILE).is_file():
            raise versions.VersionError(f"{repository / model}: no {configs.CONFIG_FILE}")
    if TOWER_ONNX_FILE not in side[c.USER_TOWER].files:
        raise versions.VersionError(f"{repository / c.USER_TOWER / '1'}: no {TOWER_ONNX_FILE}")
    return PushedBase(repository, manifest, meta, tables, side)


def _same_files(model_dir: Path, files: dict[str, str], *, prefer: int | None) -> int | None:
    """A version in ``model_dir`` whose files have exactly these checksums (``prefer`` first)."""
    numbers = versions.list_versions(model_dir)
    for number in ([prefer] if prefer in numbers else []) + numbers[::-1]:
        try:
            if versions.read_manifest(model_dir / str(number)).files == files:
                return number
        except versions.VersionError:
            continue
    return None


def _holds_user(version_dir: Path, user_id: int) -> bool:
    try:
        manifest = versions.read_manifest(version_dir)
        ids = versions.load_table(version_dir, manifest, schema.USER_IDS)
    except (versions.VersionError, OSError, ValueError):
        return True  # unreadable: cannot prove the user is absent, so it goes
    return bool(np.any(np.asarray(ids) == user_id))


def _corrupt_a_new_shard(version_dir: Path, parent_dir: Path) -> None:
    """Fault injection: flip the last byte of a shard written (not linked) for this version."""
    written = versions.written_shards(version_dir, parent_dir)
    if written:
        data = bytearray(written[0].read_bytes())
        data[-1] ^= 0xFF
        written[0].write_bytes(bytes(data))
        log.warning("fault injection: corrupted %s", written[0])
