"""Where the committed model.py templates live (publishers copy them into version folders), and
the bootstrap file the server launcher places beside the python backend."""

from __future__ import annotations

from pathlib import Path

from model_repository import contract as c

_HERE = Path(__file__).resolve().parent
# The file that every model.py imports first; the server launcher copies it into the python
# backend folder, which the stub puts on sys.path. It reads the project's import paths from the
# environment variable PYTHONPATH_ENV (spelled there too: it cannot import the project).
BOOTSTRAP = _HERE / "freshrec_paths.py"
PYTHONPATH_ENV = "FRESHREC_PYTHONPATH"
MODELS_WITH_CODE = (c.RETRIEVE, c.USER_TOWER, c.TEXT_ENCODER)


def template(model: str) -> Path:
    """The model.py template for a python-backend model."""
    if model not in MODELS_WITH_CODE:
        raise KeyError(f"no model.py template for {model!r}; known: {', '.join(MODELS_WITH_CODE)}")
    return _HERE / model / "model.py"
