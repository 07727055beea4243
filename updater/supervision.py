"""What the supervisor (`freshrec serve`) tells the updater about tritonserver: a small JSON file
in the updater's state folder, written atomically by the supervisor after each restart and read
by Admin.Status, so `freshrec status` counts restarts the updater itself cannot see."""

from __future__ import annotations

import json
import os
from pathlib import Path

SUPERVISOR_FILE = "supervisor.json"


def write_supervisor_state(state_dir: Path, *, triton_restarts: int, last_exit_code: int | None,
                           last_restart_at: float | None) -> Path:
    """Replace the file in one rename, so a reader never sees half of it."""
    path = Path(state_dir) / SUPERVISOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"triton_restarts": triton_restarts,
                               "last_exit_code": last_exit_code,
                               "last_restart_at": last_restart_at}))
    os.replace(tmp, path)
    return path


def read_supervisor_state(state_dir: Path) -> dict:
    """The last state written; zero restarts when there is none (no supervisor, or no crash)."""
    try:
        return json.loads((Path(state_dir) / SUPERVISOR_FILE).read_text())
    except (OSError, ValueError):
        return {"triton_restarts": 0, "last_exit_code": None, "last_restart_at": None}
