"""Where the committed model.py templates live; publishers copy them into version folders."""

from __future__ import annotations

from pathlib import Path

from model_repository import contract as c

_HERE = Path(__file__).resolve().parent
MODELS_WITH_CODE = (c.RETRIEVE, c.USER_TOWER, c.TEXT_ENCODER)


def template(model: str) -> Path:
    """The model.py template for a python-backend model."""
    if model not in MODELS_WITH_CODE:
        raise KeyError(f"no model.py template for {model!r}; known: {', '.join(MODELS_WITH_CODE)}")
    return _HERE / model / "model.py"
