"""What `loramix generate` costs beside a plain diffusers loop, what switching LoRA sets costs, and how a job
spreads over processes.

    python bench/bench_generate.py [--images 32] [--batch-size 8] [--repeats 3] [--job 64]

1. Throughput (toy base, 15 steps, guidance 4, the same batch size): `loramix.render.generate.generate` — plan,
   skip-existing check, PNG with A1111 text, manifest — against `pipeline(prompt=[...], generator=[...])` over
   batches with a plain `image.save`. Interleaved `repeats` times after a warm-up; medians. Bar: ratio ≥ 1.0.
2. Switching: `PipelineLoras.apply` alternating between two LoRA sets, beside the time of one image.
3. Processes: a `job`-image prompt file under `accelerate launch` with 2 processes (OMP_NUM_THREADS=1 each)
   against 1 process with OMP_NUM_THREADS=2, wall time from launch; checks every image exists exactly once.

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from loramix.lora.specs import WeightedFile
from loramix.models.load import LoadedBase, load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.render.generate import generate
from loramix.render.prompts import Defaults, PromptRow, plan, slug
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a face", "a smiling face", "a face with glasses", "a face with a mustache", "a face with lipstick",
           "a sad face", "a face with short hair", "a face with long hair"]


def plain_loop(pipeline, prompts: list[str], seeds: list[int], batch_size: int, folder: Path) -> None:
    for start in range(0, len(prompts), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        images = pipeline(prompt=prompts[start : start + batch_size], generator=generators,
                          num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE).images
        for i, image in enumerate(images, start=start):
            image.save(folder / f"{i:05d}.png")


def throughput(pipeline, loras, images: int, batch_size: int, repeats: int, scratch: Path) -> float:
    rows = [PromptRow(line=i + 1, prompt=PROMPTS[i % len(PROMPTS)]) for i in range(max(1, images // 4))]
    defaults = Defaults(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, width=64, height=64, n=4)
    jobs = plan(rows, defaults)[:images]
    prompts, seeds = [job.prompt for job in jobs], [job.seed for job in jobs]
    times: dict[str, list[float]] = {"loramix": [], "plain": []}
    for repeat in range(repeats + 1):  # the first round warms up
        for name in ("loramix", "plain"):
            folder = scratch / f"{name}{repeat}"
            folder.mkdir()
            start = time.perf_counter()
            if name == "loramix":
                generate(LoadedBase.of(pipeline, "toy"), jobs, folder, batch_size=batch_size, loras=loras, grid=False)
            else:
                plain_loop(pipeline, prompts, seeds, batch_size, folder)
            if repeat:
                times[name].append(time.perf_counter() - start)
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    print(f"throughput, {images} images, batch {batch_size}, {DEFAULT_STEPS} steps, {torch.get_num_threads()} threads:")
    for name, t in times.items():
        print(f"  {name:8s} {rate[name]:6.2f} images/s  (runs: {', '.join(f'{x:.2f}' for x in t)} s)")
    print(f"  ratio loramix / plain: {rate['loramix'] / rate['plain']:.3f}  (bar: >= 1.0)")
    return statistics.median(times["loramix"]) / images


def switching(pipeline, loras, per_image_in_batch: float, scratch: Path) -> None:
    from loramix.formats.write import write_adapter
    from loramix.testing import UNET_ATTENTION, random_adapter, weight_shapes

    shapes = weight_shapes(pipeline.unet, "unet", UNET_ATTENTION)
    paths = [str(write_adapter(random_adapter(shapes, 8, 8.0, seed), scratch / f"r{seed}.safetensors"))
             for seed in (0, 1)]
    sets = [[WeightedFile(paths[0], 0.8)], [WeightedFile(paths[0], 0.5), WeightedFile(paths[1], 0.7)]]
    loras.apply(sets[1])
    seconds = [loras.apply(sets[i % 2]) for i in range(20)]
    loras.apply([])
    settings = RenderSettings("a face", 0, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64)
    render(pipeline, [settings])
    alone = []
    for _ in range(5):
        start = time.perf_counter()
        render(pipeline, [settings])
        alone.append(time.perf_counter() - start)
    print("switching LoRA sets (fused, base not reloaded), 20 switches between {1 LoRA} and {2 LoRAs}:")
    print(f"  switch: {statistics.median(seconds) * 1000:.1f} ms median; one image: "
          f"{statistics.median(alone) * 1000:.1f} ms alone, {per_image_in_batch * 1000:.1f} ms in a batch")


def processes_job(job: int, batch_size: int, scratch: Path) -> None:
    per_prompt = 8
    prompts = scratch / "job.txt"
    prompts.write_text("".join(PROMPTS[i % len(PROMPTS)] + f" {i}\n" for i in range(job // per_prompt)))
    expected = {f"{line:03d}-{slug(PROMPTS[(line - 1) % len(PROMPTS)] + f' {line - 1}')}/{k:03d}-{k}.png"
                for line in range(1, job // per_prompt + 1) for k in range(per_prompt)}
    generate_args = ["-m", "loramix", "generate", "--prompts", str(prompts), "-n", str(per_prompt),
                     "--batch-size", str(batch_size)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    runs = {"1 process x 2 threads": ([sys.executable, *generate_args], "2"),
            "2 processes x 1 thread": ([*launch, *generate_args], "1")}
    print(f"a {len(expected)}-image job ({DEFAULT_STEPS} steps, batch {batch_size}), wall time from launch:")
    for name, (command, threads) in runs.items():
        output = scratch / name.replace(" ", "")
        start = time.perf_counter()
        done = subprocess.run([*command, "-o", str(output)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": threads})
        seconds = time.perf_counter() - start
        if done.returncode:
            print(f"  {name}: failed\n{done.stderr[-2000:]}")
            continue
        found = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png") if p.name != "grid.png")
        rows = [json.loads(line)["path"] for line in (output / "manifest.jsonl").read_text().splitlines()]
        rendered = done.stdout.split("(")[1].split(" rendered")[0]
        ok = set(found) == expected and len(found) == len(expected) and sorted(rows) == sorted(expected)
        print(f"  {name}: {seconds:6.1f} s, {len(expected) / seconds:.2f} images/s; {len(found)} images on disk, "
              f"{len(rows)} manifest rows, {rendered} rendered, missing {len(expected - set(found))}, doubled "
              f"{int(rendered) - len(expected) if rendered.isdigit() else '?'}: {'ok' if ok else 'WRONG'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", type=int, default=64)
    args = parser.parse_args()
    pipeline = load_pipeline("toy")
    loras = PipelineLoras(pipeline)
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        per_image = throughput(pipeline, loras, args.images, args.batch_size, args.repeats, Path(scratch))
        switching(pipeline, loras, per_image, Path(scratch))
        processes_job(args.job, args.batch_size, Path(scratch))


if __name__ == "__main__":
    main()
