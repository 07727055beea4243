"""Text encoder throughput: the served ONNX MiniLM (tokenizers + onnxruntime) next to torch
(transformers, the same weights and pooling) in the same run, at batch sizes 1, 32 and 128.

    python -m bench.text [--repeat 5] [--threads 0]

Texts are synthetic item titles (2-4 words, about 8 word pieces) and sentence-length queries
(about 30 word pieces). Both sides include tokenisation: ours with `tokenizers` from the version's
tokenizer.json as served, torch's with transformers' fast tokenizer of the same folder. The ONNX
file is exported in this run (the same code path as `freshrec build`). Timings: median of
``--repeat`` calls after one warm-up, timed round-robin (bench/report.py).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.report import machine_header, print_table, time_side_by_side
from exporter.synthetic import generate_synthetic
from exporter.text_encoder import (
    check_text_parity,
    export_text_encoder,
    load_torch_encoder,
    model_folder,
    tokenizer_file,
)
from model_repository.text_encoding import TextEncoderRuntime

BATCH_SIZES = (1, 32, 128)
SENTENCE = "a story about {} and {} on a long journey, told by a {} with a {} twist"


def _texts(kind: str, n: int) -> list[str]:
    items = generate_synthetic(n_users=10, n_items=max(n, 10), n_events=50, seed=0).items
    titles = items.titles[:n]
    if kind == "titles":
        return titles
    words = [w for t in titles for w in t.lower().split()]
    return [SENTENCE.format(*(words[(4 * i + j) % len(words)] for j in range(4))) for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per cell (median)")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: one per core, as served)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    encoder = load_torch_encoder()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(model_folder()), local_files_only=True)
    with tempfile.TemporaryDirectory(prefix="bench-text-") as scratch:
        onnx_path = export_text_encoder(encoder, Path(scratch) / "model.onnx")
        parity = check_text_parity(encoder, onnx_path, tokenizer_path=tokenizer_file())
        runtime = TextEncoderRuntime(onnx_path, tokenizer_file(), threads=args.threads)

        def torch_encode(texts):
            batch = hf_tokenizer(texts, padding=True, return_tensors="pt")
            with torch.inference_mode():
                return encoder(batch["input_ids"], batch["attention_mask"])

        print(machine_header([
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
            f"{__import__('onnxruntime').__version__} (CPUExecutionProvider, intra-op threads "
            f"{args.threads or 'default'}), all-MiniLM-L6-v2 fp32",
            f"parity: max |onnx - torch| = {parity:.2e} on unit vectors",
            f"method: texts/s = batch / median wall time of {args.repeat} calls after 1 warm-up, "
            "round-robin; tokenisation included on both sides",
        ]))
        rows = []
        for kind in ("titles", "sentences"):
            for batch in BATCH_SIZES:
                texts = _texts(kind, batch)
                tokens = float(np.mean([len(e.ids) for e in runtime.tokenizer.encode_batch(texts)]))
                times = time_side_by_side(
                    {"onnx": lambda t=texts: runtime.encode(t), "torch": lambda t=texts: torch_encode(t)},
                    warmup=1, repeat=args.repeat)
                ours, peer = batch / times["onnx"].median_s, batch / times["torch"].median_s
                rows.append([kind, batch, f"{tokens:.0f}", f"{ours:.0f}", f"{peer:.0f}",
                             f"{ours / peer:.2f}x"])
        print_table(["texts", "batch", "tokens/text (padded)", "onnxruntime texts/s",
                     "torch texts/s", "onnx / torch"], rows)


if __name__ == "__main__":
    main()
