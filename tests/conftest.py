"""Test-wide set-up. TRITON_INTERPRET must be set before `kernels` (and triton) is first imported,
so Triton-language kernels run on the CPU interpreter here; a CUDA host can set it to 0."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
