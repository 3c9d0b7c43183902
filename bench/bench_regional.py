"""What regional composition costs per image, beside exact, switch and composite.

    python bench/bench_regional.py [--images 8] [--repeats 3] [--threads 1]

Renders the same images (toy base, its default steps and guidance, "a face with a mustache and lipstick") with
two LoRAs through `render_jobs`, the loop every command renders through, `repeats` times per method in turns
after a warm-up, and prints the median seconds per image and the ratio to exact:

    exact                     the sum fused into the weights: one guided UNet call per step, as the base
    switch                    one LoRA per step: one call per step, plus switching adapters
    composite                 both LoRAs every step: 2 calls per step
    regional (halves)         left and right halves: the masks cover every latent pixel, so the base's call is
                              skipped: 2 calls per step
    regional (mouth)          both LoRAs in one box around the mouth (overlap shared out): the base fills the
                              rest: 3 calls per step
    regional (trigger)        no masks: each LoRA's region found from its trigger word's cross-attention in the
                              first fifth of the steps (2 calls per step, recorded), then the render again with
                              them (3 calls per step where the regions leave pixels to the base)

Uses build/loras/{mustache,lipstick}.safetensors when they exist, else two random toy LoRAs with those trigger
words in their metadata (the cost does not depend on what the LoRAs learned).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from PIL import Image

from loramix.cli.quiet import quiet_libraries
from loramix.formats.metadata import META_TRIGGER
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import Composition
from loramix.render.loop import render_jobs
from loramix.render.prompts import ImageJob
from loramix.testing import write_toy_lora
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a face with a mustache and lipstick"
SIZE = 64


def lora_files(folder: Path, scratch: Path) -> list[str]:
    trained = [folder / "mustache.safetensors", folder / "lipstick.safetensors"]
    if all(path.is_file() for path in trained):
        return [str(path) for path in trained]
    paths = []
    for seed, trigger in enumerate(("mustache", "lipstick")):
        paths.append(str(scratch / f"random-{trigger}.safetensors"))
        write_toy_lora(paths[-1], seed, metadata={META_TRIGGER: trigger})
    return paths


def box_mask(path: Path, box: tuple[int, int, int, int]) -> str:
    image = Image.new("L", (SIZE, SIZE), 0)
    image.paste(255, box)
    image.save(path)
    return str(path)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "loras")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the toy gains little from more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        paths = lora_files(args.loras, scratch)
        left, right = box_mask(scratch / "left.png", (0, 0, 32, 64)), box_mask(scratch / "right.png", (32, 0, 64, 64))
        mouth = box_mask(scratch / "mouth.png", (16, 36, 48, 56))
        weights = [0.7, 0.7]
        cases = {
            "exact": ("exact", [None, None]),
            "switch": ("switch", [None, None]),
            "composite": ("composite", [None, None]),
            "regional (halves)": ("regional", [left, right]),
            "regional (mouth)": ("regional", [mouth, mouth]),
            "regional (trigger)": ("regional", [None, None]),
        }
        pipeline = load_pipeline("toy")
        loras = PipelineLoras(pipeline)

        def seconds_per_image(method: str, masks: list[str | None]) -> float:
            files = tuple(WeightedFile(path, w, mask=m) for path, w, m in zip(paths, weights, masks))
            jobs = [ImageJob(f"{seed}.png", 0, PROMPT, "", seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, SIZE, SIZE, files)
                    for seed in range(args.images)]
            batches = list(render_jobs(pipeline, loras, jobs, Composition(method), batch_size=args.images))
            return sum(b.seconds_per_image * len(b.jobs) for b in batches) / args.images

        for method, masks in cases.values():  # warm-up: adapters loaded, files read
            seconds_per_image(method, masks)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, (method, masks) in cases.items():
                times[name].append(seconds_per_image(method, masks))

    exact = statistics.median(times["exact"])
    print(f"{args.images} images of {SIZE}×{SIZE}, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE:g}, "
          f"{args.threads} torch thread(s), median of {args.repeats}; LoRAs: {', '.join(Path(p).name for p in paths)}")
    print(f"{'method':<20} {'s/image':>8} {'÷ exact':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:8.3f} {median / exact:8.2f}")


if __name__ == "__main__":
    main()
