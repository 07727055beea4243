"""The updater stands on model_repository and kernels only: it starts without torch or the
exporter when the serving version carries its tower tables (start-up bounds crash recovery)."""

from __future__ import annotations

import ast
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



def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return ({alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
            | {node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module})


def test_the_clients_import_nothing_of_the_updater_but_its_wire_stubs():
    """clients/ reaches the updater over gRPC (the generated updater/proto stubs) or through the
    Redis layout (model_repository.redis_layout), never by importing its code."""
    for path in sorted((REPO / "clients").glob("*.py")):
        wrong = {m for m in _imports(path)
                 if (m == "updater" or m.startswith("updater.")) and not m.startswith("updater.proto")}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"
