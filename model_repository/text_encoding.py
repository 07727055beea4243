"""What `text_encoder` does: UTF-8 texts -> word pieces (tokenizers) -> ONNX MiniLM -> TEXT_EMB.

Importable and testable without a server; imports stay light (numpy, onnxruntime, tokenizers;
never transformers or torch), because the stub imports this on every load. The tokenizer is the
model folder's ``tokenizer.json``, copied into the version folder by the exporter, with its
stored truncation (128) and fixed padding turned off: texts are padded to the longest in the
batch, and a text longer than MAX_TEXT_TOKENS word pieces is an error naming the field rather
than a silently truncated query.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from model_repository import contract as c
from model_repository.serving import RequestError, decode_text

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUT_IDS = "input_ids"            # ONNX input, int64 (B, T)
ATTENTION_MASK = "attention_mask"  # ONNX input, int64 (B, T), 1 for real tokens
PAD_TOKEN = "[PAD]"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The word-piece tokenizer, without truncation, padding to the longest text of a batch."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(PAD_TOKEN), pad_token=PAD_TOKEN)
    return tokenizer


class TextEncoderRuntime:
    """tokenizer.json + model.onnx, encoding batches of already-decoded texts."""

    def __init__(self, onnx_path: str | Path, tokenizer_path: str | Path, *,
                 max_tokens: int = c.MAX_TEXT_TOKENS, threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per core
        self.session = ort.InferenceSession(str(onnx_path), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.max_tokens = max_tokens

    @classmethod
    def from_version(cls, version_dir: str | Path, **kwargs) -> TextEncoderRuntime:
        version_dir = Path(version_dir)
        return cls(version_dir / ONNX_FILE, version_dir / TOKENIZER_FILE, **kwargs)

    def tokenize(self, texts: list[str], *, field: str = c.TEXT) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both (B, T) int64. Raises RequestError naming ``field``
        for a text over ``max_tokens`` word pieces."""
        encodings = self.tokenizer.encode_batch(texts)
        for encoding in encodings:
            n_tokens = int(sum(encoding.attention_mask))
            if n_tokens > self.max_tokens:
                raise RequestError(f"{field} is too long: {n_tokens} word pieces, the limit is "
                                   f"{self.max_tokens}")
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, TEXT_DIM) float32 unit vectors for tokenised texts."""
        (emb,) = self.session.run([c.TEXT_EMB], {INPUT_IDS: input_ids,
                                                 ATTENTION_MASK: attention_mask})
        return np.asarray(emb, dtype=np.float32)

    def encode(self, texts: list[str], *, field: str = c.TEXT) -> np.ndarray:
        """(B, TEXT_DIM) float32 for decoded texts; (0, TEXT_DIM) for none."""
        if not texts:
            return np.zeros((0, c.TEXT_DIM), dtype=np.float32)
        return self.run(*self.tokenize(texts, field=field))


def encode_requests(runtime: TextEncoderRuntime, requests: list[np.ndarray]
                    ) -> list[np.ndarray | Exception]:
    """What `text_encoder` answers a batch, one outcome per request in request order.

    ``requests``: each request's TEXT values (BYTES, any shape). A request whose text is not
    UTF-8, empty, or over the character or word-piece limit gets its RequestError (naming TEXT);
    the valid texts of all requests run as one session call, giving each request its
    (n, TEXT_DIM) float32 rows; an unexpected failure there is every valid request's outcome."""
    outcomes: list[np.ndarray | Exception | None] = [None] * len(requests)
    texts, counts, slots = [], [], []
    for slot, raw in enumerate(requests):
        try:
            mine = [decode_text(value, c.TEXT) for value in np.asarray(raw).reshape(-1)]
            runtime.tokenize(mine)  # the word-piece limit, per request
        except RequestError as exc:
            outcomes[slot] = exc
            continue
        texts.extend(mine)
        counts.append(len(mine))
        slots.append(slot)
    try:
        emb = runtime.encode(texts)
    except Exception as exc:  # noqa: BLE001 - every request must get an outcome
        for slot in slots:
            outcomes[slot] = exc
        return outcomes  # type: ignore[return-value]
    starts = np.cumsum([0, *counts])
    for slot, start, stop in zip(slots, starts, starts[1:]):
        outcomes[slot] = emb[start:stop]
    return outcomes  # type: ignore[return-value]
