"""Regenerate the committed gRPC code from freshrec_updater.proto: `python -m updater.proto.generate`.

The generated files are committed so installing freshrec needs no codegen step; the import of the
messages module inside the service module is rewritten to a package-relative one.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = "freshrec_updater.proto"
GENERATED = ("freshrec_updater_pb2.py", "freshrec_updater_pb2_grpc.py")


def generate(out_dir: Path = PROTO_DIR) -> list[Path]:
    """Write the generated modules into out_dir; returns their paths."""
    from grpc_tools import protoc  # dev dependency: only needed here

    out_dir = Path(out_dir)
    code = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}", str(PROTO_DIR / PROTO_FILE),
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    grpc_module = out_dir / GENERATED[1]
    text = grpc_module.read_text()
    grpc_module.write_text(text.replace(
        "import freshrec_updater_pb2 as", "from updater.proto import freshrec_updater_pb2 as"))
    return [out_dir / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate():
        print(path)
    sys.exit(0)
