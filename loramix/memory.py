"""The process's peak memory so far, for training logs and benchmarks."""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory() -> dict[str, float]:
    """Peak RSS, and on a GPU the peak memory torch allocated there, in GiB."""
    peaks = {"peak_rss_gib": round(peak_rss_bytes() / 2**30, 3)}
    if torch.cuda.is_available():
        peaks["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peaks
