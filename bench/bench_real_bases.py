"""Real bases at their real shapes (random weights): what loading, rendering and training cost in time and memory,
and what switching LoRA sets keeps aside.

    python bench/bench_real_bases.py [--bases sd15,sdxl] [--switches 1000] [--skip-switch]

The bases are built once (`real_bases.py`) and cached outside the repository. Each command runs in a process
of its own, with the network switched off (a fresh network namespace where `unshare` can make one, and
HF_HUB_OFFLINE=1 in any case), and its peak RSS is the kernel's count for that process. That count is honest
only if nothing big was in the command's line, since the kernel carries a parent's high-water mark into a child
through fork and exec: so the commands are started by `measure.Launcher`, a tiny process started first thing;
the bases are built by `python bench/real_bases.py NAME`, in a process of its own; and this process imports
torch and loads a model only for switching, after the last measurement.

1. `loramix generate` of one 64×64 image (2 steps) from the diffusers folder and from the single file, in the
   default precision: the time to the first image (whole process) and the peak RSS.
2. `loramix train`, one step at 64×64, with quantize = "none" and "nf4": peak RSS, and nf4's ratio to none
   (goal: ≤ 0.25); and nf4 from the single file (goal: no higher than from the folder).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Launcher, Measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "samples" / "mustache"
REAL_BASES = Path(__file__).resolve().with_name("real_bases.py")


def offline(command: list[str]) -> list[str]:
    """The command in a network namespace of its own (no network at all) when this user may make one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net", *command]
    return command


def built(name: str) -> tuple[Path, Path]:
    """(the diffusers folder, the single file) of `name`, built if need be by a process of its own."""
    process = subprocess.run([sys.executable, str(REAL_BASES), name], stdout=subprocess.PIPE, text=True)
    if process.returncode != 0:
        sys.exit(f"building {name} failed (its errors are above)")
    folder, single = process.stdout.splitlines()[-2:]
    return Path(folder), Path(single)


def measured(launcher: Launcher, command: list[str], log: Path) -> Measured:
    """`command` run to its end by the launcher; a failure stops the benchmark with its log."""
    result = launcher.run(offline(command), log, {**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{log.read_text()[-3000:]}")
    return result


def loramix(*args: str) -> list[str]:
    return [sys.executable, "-m", "loramix", *args]


def generate_row(launcher: Launcher, name: str, base: Path, work: Path) -> tuple[float, float]:
    """(seconds to the first image, peak RSS in GiB)."""
    output = work / f"generate-{name}"
    result = measured(launcher, loramix("generate", "--prompt", "a face", "-n", "1", "--steps", "2", "--width",
                                        "64", "--height", "64", "--base", str(base), "--no-grid", "--no-manifest",
                                        "-o", str(output)),
                      work / f"generate-{name}.log")
    return result.seconds, result.peak_gib


def train_peak(launcher: Launcher, base: Path, quantize: str, work: Path) -> float:
    """Peak RSS in GiB of one training step."""
    output = work / f"train-{base.name}-{quantize}"
    return measured(launcher, loramix("train", "--dataset", str(DATASET), "--trigger", "mst", "--base", str(base),
                                      "--steps", "1", "--resolution", "64", "--rank", "4", "--quantize", quantize,
                                      "--no-final-samples", "--sample-every", "0", "--output", str(output)),
                    work / f"train-{base.name}-{quantize}.log").peak_gib


def switching(folder: Path, switches: int) -> dict[str, float]:
    import torch

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
        layers = [loras.layer(key) for key in shapes]
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


def measure_bases(launcher: Launcher, names: list[str], work: Path) -> tuple[dict[str, Path], list[tuple]]:
    """Each base built, then its commands measured: ({name: diffusers folder}, the table's rows)."""
    folders, rows = {}, []
    for name in names:
        started = time.perf_counter()
        folder, single = built(name)
        folders[name] = folder
        print(f"{name}: bases ready in {time.perf_counter() - started:.0f} s ({folder})", flush=True)
        folder_time, folder_peak = generate_row(launcher, f"{name}-folder", folder, work)
        file_time, file_peak = generate_row(launcher, f"{name}-file", single, work)
        print(f"{name}: generate done", flush=True)
        none, nf4 = train_peak(launcher, folder, "none", work), train_peak(launcher, folder, "nf4", work)
        nf4_file = train_peak(launcher, single, "nf4", work)
        rows.append((name, folder_time, folder_peak, file_time, file_peak, none, nf4, nf4_file))
        print(f"{name}: train done", flush=True)
    return folders, rows


def main() -> None:
    with Launcher() as launcher:  # first, while this process is small: see measure.py
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--bases", default="sd15,sdxl")
        parser.add_argument("--switches", type=int, default=1000)
        parser.add_argument("--skip-switch", action="store_true")
        args = parser.parse_args()
        work = Path(tempfile.mkdtemp(prefix="loramix-bench-real-"))
        folders, rows = measure_bases(launcher, args.bases.split(","), work)
    print("\n| base | generate 64×64, folder: first image / peak RSS | single file: first image / peak RSS "
          "| file ÷ folder: time / peak | train step peak RSS, none | nf4 | nf4 ÷ none | nf4 from the single file |")
    print("|---|---|---|---|---|---|---|---|")
    for name, folder_time, folder_peak, file_time, file_peak, none, nf4, nf4_file in rows:
        print(f"| {name} | {folder_time:.1f} s / {folder_peak:.2f} GiB | {file_time:.1f} s / {file_peak:.2f} GiB "
              f"| ×{file_time / folder_time:.2f} / ×{file_peak / folder_peak:.2f} | {none:.2f} GiB | {nf4:.2f} GiB "
              f"| ×{nf4 / none:.2f} | {nf4_file:.2f} GiB |")
    if not args.skip_switch:
        print(f"\nSwitching two rank-16 sets on the UNet attention, {args.switches} switches:")
        for name, folder in folders.items():
            result = switching(folder, args.switches if name == "sd15" else min(args.switches, 20))
            share = result["kept_gib"] / result["touched_gib"]
            print(f"{name} ({result['dtype']}): kept to undo a set {result['kept_gib']:.3f} GiB against "
                  f"{result['touched_gib']:.3f} GiB of touched weights (×{share:.2f}); "
                  f"{result['seconds'] * 1000:.0f} ms a switch (median); every bit back after the last: "
                  f"{result['exact']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
