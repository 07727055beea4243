"""Switching the running `retrieve` model to newer data-only versions, between batches.

Every Triton `load_model` of retrieve starts a new stub and also reloads the `recommend`
ensemble over it; one soak crashed tritonserver (SIGSEGV) at the 547th such reload, a known
hazard (triton-inference-server/server#2607). So a version that changes only tables is not
loaded by Triton: the running model notices it and switches to it itself.

    publisher: write version N (one atomic rename) -> verify -> probe until VERSION == N
    retrieve:  watcher thread sees N -> `swap_blocker` (same code? same d?) -> verify N
               against the version it serves -> memory-map, warm up -> `current` = N

A version appears by one rename into the model folder, which changes the folder's mtime, so
the watcher polls one `stat` every `poll_s` and scans only when that moved. A half-written
version is never seen (temporary folders are not numbered; `versions.list_versions` lists
only numbered folders holding a manifest). Verification trusts shards hard-linked from the
version being served and checksums the rest, so it costs O(rows changed). A version that fails
is refused once, logged with the reason, and never tried again; one with other code (model.py)
or another embedding size waits for a `load_model`, which starts a new model on it. The batch
being answered holds its own reference to the Retriever it started with, so a switch never
mixes two versions in one answer, and the old memory maps are released when the last batch
holding them ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.canary import CANARY, CONTROL, CanarySplit, arm_of, read_split

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.005  # one stat of the model folder: ~2 us; a switch waits at most this long
CODE_FILE = "model.py"


def swap_blocker(serving: versions.Manifest, candidate: versions.Manifest) -> str | None:
    """Why ``candidate`` cannot replace ``serving`` inside the running model (None: it can).

    Only data may change: the same model.py (code) and the same embedding size. Anything else
    needs Triton's load_model. The publisher and the running model both decide with this."""
    if serving.files.get(CODE_FILE) != candidate.files.get(CODE_FILE):
        return f"its {CODE_FILE} differs from the running one (code change: needs load_model)"
    try:
        dims = (schema.RetrieveMeta.from_manifest(serving).dim,
                schema.RetrieveMeta.from_manifest(candidate).dim)
    except schema.SchemaError as exc:
        return str(exc)
    if dims[0] != dims[1]:
        return f"its embedding size {dims[1]} differs from the running {dims[0]} (needs load_model)"
    return None


def newest_good_version(model_dir: Path, *, at_most: int) -> Path:
    """The newest control version folder (model_repository.canary) numbered ``at_most`` or
    lower that verifies in full: where a model Triton just loaded starts. After a crash the
    newest folder may be one no publisher checked (renamed, then the updater died; a byte
    flipped on disk); it is skipped, logged. Raises VersionError when none verifies."""
    for version in reversed(versions.list_versions(model_dir)):
        if version > at_most:
            continue
        try:
            if arm_of(versions.read_manifest(Path(model_dir) / str(version)).meta) == CANARY:
                continue  # the control starts here; the watcher finds the canary's own
            versions.verify_version(Path(model_dir) / str(version))
        except versions.VersionError as exc:
            log.error("retrieve version %s does not verify, trying an older one: %s", version, exc)
            continue
        return Path(model_dir) / str(version)
    raise versions.VersionError(f"no retrieve version up to {at_most} in {model_dir} verifies")


class VersionWatcher:
    """The Retriever a running model answers from: `current`, switched by a background thread.

    ``open_version(version_dir)`` builds a ready Retriever (tables mapped, warmed up); it runs
    on the watcher thread, never on a request's path."""

    def __init__(self, model_dir: Path, first, open_version: Callable[[Path], object], *,
                 poll_s: float = DEFAULT_POLL_S,
                 on_switch: Callable[[float], None] | None = None):
        """``on_switch(seconds)``: called after each switch with the seconds it took to verify
        and open the new version (retrieve's metrics)."""
        self.model_dir = Path(model_dir)
        self.on_switch = on_switch
        self.current = first  # a Retriever; read once per batch by the model
        # a running canary (model_repository.canary): its split and the newest version of its
        # lineage, both None without one; (split, canary) is replaced as one tuple
        self.canary: tuple[CanarySplit, object] | None = None
        self._open = open_version
        self.poll_s = poll_s
        self.refused: dict[int, str] = {}  # version -> why it is never used
        self._mtime_ns: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> int:
        return self.current.version

    def start(self) -> VersionWatcher:
        self._thread = threading.Thread(target=self._run, name="retrieve-versions", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad version
                log.exception("retrieve version watcher failed; serving version %s still",
                              self.version)

    def check(self) -> bool:
        """Switch to the newest usable version if there is a newer one. Returns True on a switch.
        Cheap when nothing moved: one stat of the model folder."""
        try:
            mtime_ns = os.stat(self.model_dir).st_mtime_ns
        except OSError:
            return False
        if mtime_ns == self._mtime_ns:
            return False
        self._mtime_ns = mtime_ns
        split = read_split(self.model_dir)
        switched = self._check_control(split)
        if split is None:
            if self.canary is not None:
                log.info("retrieve: the canary ended; every user is the control's again")
                self.canary = None
            return switched
        return self._check_canary(split) or switched

    def _newest(self, split: CanarySplit | None, arm: str, above: int):
        """(version, manifest) of the arm's versions newer than ``above``, newest first (a
        version of the canary's lineage needs a running canary and a number from its first)."""
        for version in reversed(versions.list_versions(self.model_dir)):
            if version <= above:
                return
            if version in self.refused:
                continue
            try:
                manifest = versions.read_manifest(self.model_dir / str(version))
            except versions.VersionError:
                self._mtime_ns = None  # deleted under us (GC, quarantine): scan again
                continue
            mine = arm_of(manifest.meta)
            if mine == CANARY and (split is None or version < split.first_version):
                continue
            if mine == arm:
                yield version, manifest

    def _check_control(self, split: CanarySplit | None) -> bool:
        for version, manifest in self._newest(split, CONTROL, self.version):
            retriever = self._open_checked(version, manifest, self.current,
                                           swap_blocker(self.current.manifest, manifest))
            if retriever is not None:
                log.info("retrieve switched from version %s to %s", self.current.version, version)
                self.current = retriever
                return True
        return False

    def _check_canary(self, split: CanarySplit) -> bool:
        serving = self.canary[1] if self.canary is not None else None
        above = serving.version if serving is not None else split.first_version - 1
        for version, manifest in self._newest(split, CANARY, above):
            # its own code must be the running one; any embedding size: it has its own tables
            blocker = (f"its {CODE_FILE} differs from the running one"
                       if manifest.files.get(CODE_FILE) != self.current.manifest.files.get(CODE_FILE)
                       else None)
            retriever = self._open_checked(version, manifest, serving, blocker)
            if retriever is not None:
                log.info("retrieve: the canary (%.1f %% of users) answers from version %s",
                         100 * split.share, version)
                self.canary = (split, retriever)
                return True
        if serving is not None and self.canary[0] != split:
            self.canary = (split, serving)  # restated (another share): same version
        return False

    def _open_checked(self, version: int, manifest: versions.Manifest, serving,
                      blocker: str | None):
        """A ready Retriever for ``version``, or None with the version refused for good."""
        version_dir = self.model_dir / str(version)
        reason = blocker
        if reason is None:
            started = time.perf_counter()
            try:
                versions.verify_version(
                    version_dir, trusted_parent=serving.version_dir if serving else None)
                opened = self._open(version_dir)
                if self.on_switch is not None:
                    self.on_switch(time.perf_counter() - started)
                return opened
            except (versions.VersionError, OSError, ValueError) as exc:
                if not version_dir.is_dir():
                    self._mtime_ns = None  # deleted under us (GC, quarantine): scan again
                    return None
                reason = f"failed verification or loading: {exc}"
        self.refused[version] = reason
        log.error("retrieve version %s refused, serving %s still: %s", version,
                  serving.version if serving else "no canary", reason)
        return None
