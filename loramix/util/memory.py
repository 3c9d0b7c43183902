"""The process's peak memory so far, for training logs and benchmarks, and keeping that peak honest."""

from __future__ import annotations

import ctypes
import resource
import sys


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory() -> dict[str, float]:
    """Peak RSS, and on a GPU the peak memory torch allocated there, in GiB."""
    import torch

    peaks = {"peak_rss_gib": round(peak_rss_bytes() / 2**30, 3)}
    if torch.cuda.is_available():
        peaks["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return peaks


MMAP_THRESHOLD = 2**20  # allocations this big or bigger get a mapping of their own, unmapped when freed
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_freed_memory_to_the_system() -> None:
    """Have glibc's malloc serve every allocation of 1 MiB or more by its own mapping, given back when freed.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB), after which the
    per-layer buffers of loading and quantizing a base are carved from the heap and stay there as holes: SDXL
    quantized as it loads ended at 4.7 GiB resident instead of 1.8. A process-wide setting, so the command line
    makes it once at start; a no-op where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


REUSE_MMAP_THRESHOLD = 32 * 2**20  # the ceiling glibc's own dynamic threshold rises to
M_TRIM_THRESHOLD = -1


def reuse_freed_memory() -> None:
    """Have glibc keep freed memory for the next allocation: blocks under 32 MiB from its heap, and up to twice
    that kept free at the heap's top, where glibc's own dynamic thresholds settle. For a loop that allocates and
    frees the same buffers at every step, once the models are loaded: under `return_freed_memory_to_the_system`
    each `loramix train` step mapped its larger buffers afresh and faulted their pages in, 6-10% of a toy step.
    Process-wide; a no-op where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, REUSE_MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, 2 * REUSE_MMAP_THRESHOLD)


def trim_free_heap() -> None:
    """Give the free pages inside glibc's heap back to the system (malloc_trim): after models are dropped, the
    holes they leave among small allocations otherwise stay resident. A no-op where the C library is not
    glibc."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _glibc(function: str):
    """A function of glibc, or None where the C library is another."""
    if sys.platform != "linux":
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None
