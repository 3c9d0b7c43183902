"""Soak: a long `loramix generate` run on the toy base keeps its memory flat.

    OMP_NUM_THREADS=1 python bench/bench_soak.py [--images 1000] [--prompts 10] [--batch-size 8] [--steps 15]

Runs the real CLI in a child process over a prompt file (`--prompts` rows, `images / prompts` images each) and
samples the child's /proc/PID/status every 50 ms: VmRSS (now) and VmHWM (peak so far), read when the output
first holds 100, 200, … images. The peak after the whole run (manifest and contact sheet included) comes from
getrusage(RUSAGE_CHILDREN). Flat memory: the peak at the last image is within a few percent of the peak at 100
(everything per image — latents, PIL images, PNG buffers — is freed batch by batch; what grows with the run is
the manifest rows, about 0.5 kB an image).

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a face", "a smiling face", "a face with glasses", "a face with a mustache", "a face with lipstick",
           "a sad face", "a face with short hair", "a face with long hair", "a surprised face", "an old face"]


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB; {} once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def count_pngs(output: Path) -> int:
    count = 0
    for folder in (p for p in output.iterdir() if p.is_dir()) if output.is_dir() else ():
        with os.scandir(folder) as entries:
            count += sum(1 for e in entries if e.name.endswith(".png") and not e.name.startswith("."))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--prompts", type=int, default=10, help="prompt-file rows; images are shared among them")
    parser.add_argument("--every", type=int, default=100, help="report memory each time this many more exist")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the toy base's)")
    parser.add_argument("--output", type=Path, help="where the images go (default: a temporary folder)")
    args = parser.parse_args()
    if args.images % args.prompts:
        parser.error("--images must be a multiple of --prompts")

    scratch = tempfile.TemporaryDirectory(prefix="loramix-soak-")
    output = args.output or Path(scratch.name) / "out"
    prompt_file = Path(scratch.name) / "prompts.txt"
    prompt_file.write_text("".join(PROMPTS[i % len(PROMPTS)] + f" {i}\n" for i in range(args.prompts)))
    command = [sys.executable, "-m", "loramix", "generate", "--prompts", str(prompt_file),
               "-n", str(args.images // args.prompts), "--batch-size", str(args.batch_size), "-o", str(output)]
    if args.steps:
        command += ["--steps", str(args.steps)]
    print(" ".join(command[1:]))
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")

    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    marks: list[tuple[int, float, dict[str, int]]] = []  # (images, seconds, VmRSS/VmHWM)
    first_image = None
    while child.poll() is None:
        done = count_pngs(output)
        memory = status_kib(child.pid)
        if done and first_image is None:
            first_image = time.monotonic() - started
        while memory and len(marks) < args.images // args.every and done >= (len(marks) + 1) * args.every:
            marks.append(((len(marks) + 1) * args.every, time.monotonic() - started, memory))
        time.sleep(0.05)
    wall = time.monotonic() - started
    stdout = child.stdout.read()
    peak_total = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    if child.returncode != 0:
        sys.exit(f"generate failed with exit status {child.returncode}:\n{stdout}")
    print(stdout.strip())

    print(f"\n{'images':>7} {'seconds':>8} {'VmRSS MiB':>10} {'peak MiB':>9}")
    for images, seconds, memory in marks:
        print(f"{images:>7} {seconds:>8.1f} {memory['VmRSS'] / 1024:>10.1f} {memory['VmHWM'] / 1024:>9.1f}")
    print(f"{'end':>7} {wall:>8.1f} {'':>10} {peak_total / 1024:>9.1f}   (after the manifest and grid.png)")
    if marks:
        at_first, at_last = marks[0], marks[-1]
        print(f"\npeak RSS at {at_first[0]} images: {at_first[2]['VmHWM'] / 1024:.1f} MiB; at {at_last[0]}: "
              f"{at_last[2]['VmHWM'] / 1024:.1f} MiB (ratio {at_last[2]['VmHWM'] / at_first[2]['VmHWM']:.3f}); "
              f"whole run: {peak_total / 1024:.1f} MiB (ratio {peak_total / at_first[2]['VmHWM']:.3f})")
        print(f"RSS now at {at_first[0]} images: {at_first[2]['VmRSS'] / 1024:.1f} MiB; at {at_last[0]}: "
              f"{at_last[2]['VmRSS'] / 1024:.1f} MiB")
        rendering = at_last[1] - at_first[1]
        print(f"wall time: {wall:.1f} s in all ({first_image:.1f} s to the first image, "
              f"{rendering / (at_last[0] - at_first[0]) * 1000:.1f} ms an image from {at_first[0]} to {at_last[0]})")
    scratch.cleanup()


if __name__ == "__main__":
    main()
