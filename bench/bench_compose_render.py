"""What a composition costs at render time: fused (loramix) and unfused (diffusers' set_adapters), against the base.

    python bench/bench_compose_render.py [--loras build/loras] [--repeats 7]

Renders the same 8 images (toy base, default steps) three ways, interleaved `repeats` times after a warm-up:
the base alone; two LoRAs composed exactly and fused into the weights (`PipelineLoras.apply`); and the same two
files loaded with diffusers' `load_lora_weights` and activated with `set_adapters` (peft's unfused side paths).
Prints the median times and their ratios to the base. Bar: fused ÷ base ≤ 1.02. Also prints the time to switch
the fused pipeline between two LoRA sets, beside the time of one image.

Uses build/loras/{mustache,lipstick}.safetensors when they exist, else two random rank-8 LoRAs (the cost does
not depend on what the LoRAs learned).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS

ROOT = Path(__file__).resolve().parents[1]


def lora_files(folder: Path, scratch: Path) -> list[str]:
    trained = [folder / "mustache.safetensors", folder / "lipstick.safetensors"]
    if all(path.is_file() for path in trained):
        return [str(path) for path in trained]
    from loramix.formats.write import write_adapter
    from loramix.testing import UNET_ATTENTION, random_adapter, weight_shapes

    shapes = weight_shapes(load_pipeline("toy").unet, "unet", UNET_ATTENTION)
    paths = []
    for seed in (0, 1):
        path = scratch / f"random{seed}.safetensors"
        write_adapter(random_adapter(shapes, 8, 8.0, seed), path)
        paths.append(str(path))
    return paths


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "loras")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        paths = lora_files(args.loras, Path(scratch))
        settings = [RenderSettings("a face with a mustache and lipstick", seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64)
                    for seed in range(8)]
        weights = [0.7, 0.5]

        fused_pipeline = load_pipeline("toy")
        fused = PipelineLoras(fused_pipeline)
        pair = [WeightedFile(path, w) for path, w in zip(paths, weights)]

        unfused_pipeline = load_pipeline("toy")
        for i, path in enumerate(paths):
            unfused_pipeline.load_lora_weights(path, adapter_name=f"l{i}")
        unfused_pipeline.set_adapters(["l0", "l1"], adapter_weights=weights)

        def base():
            fused.apply([])
            render(fused_pipeline, settings)

        def with_fused():
            fused.apply(pair)
            render(fused_pipeline, settings)

        def with_unfused():
            render(unfused_pipeline, settings)

        runs = {"base": [], "fused": [], "unfused": []}
        for function in (base, with_fused, with_unfused):  # warm-up
            function()
        for _ in range(args.repeats):
            fused.apply([])
            runs["base"].append(timed(lambda: render(fused_pipeline, settings)))
            fused.apply(pair)
            runs["fused"].append(timed(lambda: render(fused_pipeline, settings)))
            runs["unfused"].append(timed(with_unfused))
        median = {name: statistics.median(times) for name, times in runs.items()}

        other = [WeightedFile(paths[0], 1.0)]
        switches = []
        for _ in range(args.repeats):
            switches.append(timed(lambda: fused.apply(other)))
            switches.append(timed(lambda: fused.apply(pair)))

    print(f"8 images, {DEFAULT_STEPS} steps, torch threads {torch.get_num_threads()}, median of {args.repeats}:")
    print(f"  base alone                          {median['base']:.3f} s")
    fused_ratio = median["fused"] / median["base"]
    print(f"  2 LoRAs fused (loramix)             {median['fused']:.3f} s   ratio {fused_ratio:.3f}   (bar ≤ 1.02)")
    print(f"  2 LoRAs unfused (diffusers set_adapters) {median['unfused']:.3f} s   ratio "
          f"{median['unfused'] / median['base']:.3f}")
    print(f"  switching the fused set             {statistics.median(switches) * 1000:.1f} ms   "
          f"(one image: {median['base'] / 8 * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
