"""Real bases at their real shapes (random weights): what loading, rendering and training cost in time and memory,
and what switching LoRA sets keeps aside.

    python bench/bench_real_bases.py [--bases sd15,sdxl] [--switches 1000] [--skip-switch]

The bases are built once (`real_bases.py`) and cached outside the repository. Each command runs in a process
of its own, with the network switched off (a fresh network namespace where `unshare` can make one, and
HF_HUB_OFFLINE=1 in any case), and its peak RSS is the kernel's count for that process:

1. `loramix generate` of one 64×64 image (2 steps) from the diffusers folder and from the single file, in the
   default precision: the time to the first image (whole process) and the peak RSS.
2. `loramix train`, one step at 64×64, with quantize = "none" and "nf4": peak RSS, and nf4's ratio to none.
   Goal: ≤ 0.5 on SD 1.5, ≤ 0.35 on SDXL.
3. Switching (in this process): two random rank-16 LoRA sets on the UNet attention, alternated `--switches`
   times on the fused base: the bytes kept to undo a set against a copy of the weights it touches, the
   seconds per switch, and whether every touched weight has its original bits at the end (drift).

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_bases import real_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "samples" / "mustache"


def offline(command: list[str]) -> list[str]:
    """The command in a network namespace of its own (no network at all) when this user may make one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net", *command]
    return command


def measured(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of `command` run to its end; a failure stops the benchmark with its log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(offline(command), stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20  # KiB → GiB


def loramix(*args: str) -> list[str]:
    return [sys.executable, "-m", "loramix", *args]


def generate_row(name: str, base: Path, work: Path) -> tuple[float, float]:
    output = work / f"generate-{name}"
    return measured(loramix("generate", "--prompt", "a face", "-n", "1", "--steps", "2", "--width", "64",
                            "--height", "64", "--base", str(base), "--no-grid", "--no-manifest", "-o", str(output)),
                    work / f"generate-{name}.log")


def train_peak(base: Path, quantize: str, work: Path) -> float:
    output = work / f"train-{base.name}-{quantize}"
    _, peak = measured(loramix("train", "--dataset", str(DATASET), "--trigger", "mst", "--base", str(base),
                               "--steps", "1", "--resolution", "64", "--rank", "4", "--quantize", quantize,
                               "--no-final-samples", "--sample-every", "0", "--output", str(output)),
                       work / f"train-{base.name}-{quantize}.log")
    return peak


def switching(folder: Path, switches: int) -> dict[str, float]:
    from loramix.formats.write import write_adapter
    from loramix.lora.specs import WeightedFile
    from loramix.models.load import load_pipeline
    from loramix.models.loras import PipelineLoras
    from loramix.testing import UNET_ATTENTION, random_adapter, weight_shapes

    pipeline = load_pipeline(folder)
    shapes = weight_shapes(pipeline.unet, "unet", UNET_ATTENTION)
    with tempfile.TemporaryDirectory() as scratch:
        files = []
        for seed in range(2):
            files.append(str(Path(scratch) / f"set{seed}.safetensors"))
            write_adapter(random_adapter(shapes, 16, 16.0, seed), files[-1])
        loras = PipelineLoras(pipeline)
        loras.apply([WeightedFile(files[0], 0.8)])
        layers = [loras._layer(key) for key in shapes]
        loras.apply([])
        originals = [layer.weight.detach().clone() for layer in layers]  # for the drift check only
        touched = sum(w.numel() * w.element_size() for w in originals)
        kept, seconds = [], []
        for switch in range(switches):
            seconds.append(loras.apply([WeightedFile(files[switch % 2], 0.8), WeightedFile(files[1], 0.3)]))
            kept.append(loras.restore_bytes())
        loras.apply([])
    exact = all(torch.equal(layer.weight, original) for layer, original in zip(layers, originals))
    return {"dtype": str(pipeline.unet.dtype).removeprefix("torch."), "touched_gib": touched / 2**30,
            "kept_gib": max(kept) / 2**30, "seconds": statistics.median(seconds), "exact": exact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", default="sd15,sdxl")
    parser.add_argument("--switches", type=int, default=1000)
    parser.add_argument("--skip-switch", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loramix-bench-real-"))
    rows = []
    for name in args.bases.split(","):
        started = time.perf_counter()
        folder, single = real_base(name)
        print(f"{name}: bases ready in {time.perf_counter() - started:.0f} s ({folder})", flush=True)
        folder_time, folder_peak = generate_row(f"{name}-folder", folder, work)
        file_time, file_peak = generate_row(f"{name}-file", single, work)
        print(f"{name}: generate done", flush=True)
        none, nf4 = train_peak(folder, "none", work), train_peak(folder, "nf4", work)
        rows.append((name, folder_time, folder_peak, file_time, file_peak, none, nf4))
        print(f"{name}: train done", flush=True)
    print("\n| base | generate 64×64, folder: first image / peak RSS | single file: first image / peak RSS "
          "| train step peak RSS, none | nf4 | nf4 ÷ none |")
    print("|---|---|---|---|---|---|")
    for name, folder_time, folder_peak, file_time, file_peak, none, nf4 in rows:
        print(f"| {name} | {folder_time:.1f} s / {folder_peak:.2f} GiB | {file_time:.1f} s / {file_peak:.2f} GiB "
              f"| {none:.2f} GiB | {nf4:.2f} GiB | ×{nf4 / none:.2f} |")
    if not args.skip_switch:
        print(f"\nSwitching two rank-16 sets on the UNet attention, {args.switches} switches:")
        for name in args.bases.split(","):
            folder, _ = real_base(name)
            result = switching(folder, args.switches if name == "sd15" else min(args.switches, 20))
            share = result["kept_gib"] / result["touched_gib"]
            print(f"{name} ({result['dtype']}): kept to undo a set {result['kept_gib']:.3f} GiB against "
                  f"{result['touched_gib']:.3f} GiB of touched weights (×{share:.2f}); "
                  f"{result['seconds'] * 1000:.0f} ms a switch (median); every bit back after the last: "
                  f"{result['exact']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
