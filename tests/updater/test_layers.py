"""The updater stands on model_repository and kernels only: it starts without torch or the
exporter when the serving version carries its tower tables (start-up bounds crash recovery)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
import updater.engine, updater.main, updater.publisher, updater.service, updater.trainer
heavy = sorted(m for m in ("torch", "exporter", "freshrec", "transformers") if m in sys.modules)
assert not heavy, f"imported {heavy}"
print("ok")
"""


def test_the_updater_imports_neither_torch_nor_the_exporter_nor_freshrec():
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
