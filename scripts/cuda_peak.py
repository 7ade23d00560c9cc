"""Run one imagic-lora command as the CLI does, then print the peak CUDA memory it allocated.

The GPU check's end-to-end steps use it: ``python scripts/cuda_peak.py train NAME IMAGE ...``.
"""

from __future__ import annotations

import sys

import torch

from imagic_lora.cli import cli

PEAK_PREFIX = "peak_cuda_bytes="

if __name__ == "__main__":
    try:
        cli(args=sys.argv[1:], prog_name="imagic-lora")
    finally:
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        print(f"{PEAK_PREFIX}{peak}", flush=True)
