"""What a step schedule costs: one switch (re-fusing the set between two steps), and a render with and without one.

    python bench/bench_schedules.py [--repeats 5] [--sd15-repeats 2]

One random LoRA on the UNet attention (rank 8 on the toy base, 16 on SD 1.5), rendered on the fused fp32 base
three ways, interleaved `repeats` times after a warm-up round:

    plain 0.8          the weight fused once, no callback
    range 0.8@0.5-1    off for the first half, then fused: one switch a render
    ramp 0@0,1@1       a new weight at every step: steps − 1 switches a render

Each render starts from the bare base, so putting the first set on counts in every row alike. Prints the median
render time, its ratio to the plain one, and the median time of a switch as `StepWeights` records it (restore,
compose, fuse: `PipelineLoras.apply`). Toy base: 8 images of 64×64, its 15 steps. SD 1.5 at its real shapes
(random weights, from bench/real_bases.py's cache, skipped when not built there): 1 image of 64×64, 6 steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import parse_weight_spec
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.render.scheduled import StepWeights

SCHEDULES = {"plain 0.8": "0.8", "range 0.8@0.5-1": "0.8@0.5-1", "ramp 0@0,1@1": "0@0,1@1"}


def random_lora(pipeline, rank: int, path: Path) -> str:
    from loramix.formats.write import write_adapter
    from loramix.testing import UNET_ATTENTION, random_adapter, weight_shapes

    write_adapter(random_adapter(weight_shapes(pipeline.unet, "unet", UNET_ATTENTION), rank, float(rank), 0), path)
    return str(path)


def measure(pipeline, lora: str, settings: list[RenderSettings], repeats: int) -> dict[str, dict]:
    loras = PipelineLoras(pipeline)
    results = {name: {"seconds": [], "switches": []} for name in SCHEDULES}
    for repeat in range(repeats + 1):  # round 0 warms up
        for name, weight in SCHEDULES.items():
            weighted = parse_weight_spec(f"{lora}:{weight}")
            steps = StepWeights(loras, (weighted,))
            loras.apply([])
            start = time.perf_counter()
            steps.start()
            render(pipeline, settings, on_step=steps if weighted.schedule else None)
            seconds = time.perf_counter() - start
            if repeat:
                results[name]["seconds"].append(seconds)
                results[name]["switches"].append(steps.switch_seconds)
    loras.apply([])
    return results


def report(title: str, results: dict[str, dict]) -> None:
    print(title)
    plain = statistics.median(results["plain 0.8"]["seconds"])
    for name, result in results.items():
        seconds = statistics.median(result["seconds"])
        switches = [s for run in result["switches"] for s in run]
        line = f"  {name:<16} {seconds:7.3f} s  ×{seconds / plain:.2f}"
        if switches:
            count = len(switches) // len(result["switches"])
            line += (f", {count} switch{'es' if count > 1 else ''} a render, "
                     f"{statistics.median(switches) * 1000:.1f} ms a switch (median)")
        print(line)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sd15-repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        toy = load_pipeline("toy")
        toy.set_progress_bar_config(disable=True)
        settings = [RenderSettings("a face", seed, 15, 4.0, 64, 64) for seed in range(8)]
        results = measure(toy, random_lora(toy, 8, Path(scratch) / "toy.safetensors"), settings, args.repeats)
        report(f"toy base, 8 images of 64×64, 15 steps, rank-8 LoRA on the UNet attention, median of "
               f"{args.repeats}:", results)
        del toy

        from real_bases import cache_folder

        folder = cache_folder() / "sd15"
        if not folder.is_dir():
            print(f"SD 1.5: skipped, no base at {folder} (python bench/bench_real_bases.py builds it)")
            return
        sd15 = load_pipeline(folder)
        sd15.set_progress_bar_config(disable=True)
        settings = [RenderSettings("a face", 0, 6, 4.0, 64, 64)]
        results = measure(sd15, random_lora(sd15, 16, Path(scratch) / "sd15.safetensors"), settings,
                          args.sd15_repeats)
        report(f"SD 1.5 shapes (random weights, fp32), 1 image of 64×64, 6 steps, rank-16 LoRA on the UNet "
               f"attention, median of {args.sd15_repeats}:", results)


if __name__ == "__main__":
    main()
