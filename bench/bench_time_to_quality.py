"""Time to quality: each shipped recipe's attribute and face rates (bench_single's phrasings and seeds) against
the seconds of its whole `loramix train` command, at several step counts; then loramix's training loop against
a plain one written here with diffusers and peft alone, on the same model, data, batch, quantization and loss.

    python bench/bench_time_to_quality.py                       # fresh set, the recipes' own step counts
    python bench/bench_time_to_quality.py --steps 150,300,600 --set tune --recipes mustache
    python bench/bench_time_to_quality.py --loop-only           # steps per second, loramix ÷ plain
    python bench/bench_time_to_quality.py --batches 8,16,32 --loop-steps 40 --recipes mustache   # a step's cost

Run it alone on the machine: the seconds are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch
from bench_single import judged
from heldout import SETS

from loramix.cli.quiet import quiet_libraries
from loramix.lora.specs import WeightedFile
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.toy.judge import ATTRIBUTES, load_judge

ROOT = Path(__file__).resolve().parents[1]


def recipe_of(name: str) -> dict:
    path = ROOT / "recipes" / f"{name}.toml"
    recipe = tomllib.loads(path.read_text())
    recipe["dataset"] = str((path.parent / recipe["dataset"]).resolve())
    return recipe


def timed_run(name: str, steps: int, folder: Path) -> tuple[Path, float]:
    """The recipe trained for `steps` by the whole command (start-up and final samples included): its file and
    the command's wall-clock seconds."""
    output = folder / f"{name}-{steps}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loramix", "train", str(ROOT / "recipes" / f"{name}.toml"),
                    "--steps", str(steps), "--output", str(output)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return output / f"{name}.safetensors", time.perf_counter() - start


def quality(args) -> None:
    phrasings, seeds = SETS[args.set]
    judge = load_judge()
    pipeline = load_pipeline("toy")
    loras = PipelineLoras(pipeline)
    print(f"{args.set}: {len(seeds)} seeds × the attribute's phrasings, each LoRA alone at weight 1")
    print(f"{'recipe':<10} {'steps':>6} {'seconds':>8} {'attribute':>9} {'face':>6}")
    for name in args.recipes.split(","):
        steps_list = [int(s) for s in args.steps.split(",")] if args.steps else [recipe_of(name)["steps"]]
        column = ATTRIBUTES.index(name)
        for steps in steps_list:
            path, seconds = timed_run(name, steps, args.folder)
            verdicts = judged(pipeline, loras, (WeightedFile(str(path), 1.0),), phrasings[name], list(seeds), judge)
            print(f"{name:<10} {steps:>6} {seconds:>8.1f} {verdicts[..., column].mean():>9.0%} "
                  f"{verdicts[..., 0].mean():>6.0%}", flush=True)


# --- the plain loop ----------------------------------------------------------------------------------------


def plain_step_seconds(recipe: dict, steps: int, warmup: int) -> list[float]:
    """The recipe's loss trained by a loop of diffusers and peft calls only: peft's LoRA layers on the same nf4
    base, latents cached by the VAE, the recipe's loss (plain, or masked with prior preservation), its caption
    dropout, min-SNR, AdamW, clipping."""
    import numpy as np
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from PIL import Image

    torch.manual_seed(0)
    pipeline = load_pipeline(recipe.get("base", "toy"), quantize=recipe.get("quantize", "nf4"))  # the same model
    unet, text_encoder, vae, tokenizer = pipeline.unet, pipeline.text_encoder, pipeline.vae, pipeline.tokenizer
    for model in (unet, text_encoder, vae):
        model.requires_grad_(False)
    rank, alpha = recipe["rank"], recipe.get("alpha", recipe["rank"])
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=recipe["targets"],
                                       init_lora_weights="gaussian"), unet)
    train_text = recipe.get("train_text_encoder", False)
    if train_text:
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), text_encoder)
    params = [p for model in (unet, text_encoder) for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    lora_layers = [m for model in (unet, text_encoder) for m in model.modules() if isinstance(m, BaseTunerLayer)]
    unet.train()
    text_encoder.train(train_text)

    folder = Path(recipe["dataset"])
    files = sorted(p for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    captions = [f.with_suffix(".txt").read_text().splitlines()[0] for f in files]
    with torch.no_grad():
        latent = vae.encode(pixels.float() / 127.5 - 1).latent_dist
        mean, std = latent.mean, latent.std
    masked = recipe.get("masked_loss", False)  # else the plain loss, and no prior preservation (as loramix's)
    if masked:
        masks = torch.stack([torch.from_numpy(np.array(Image.open(f.with_name(f.stem + ".mask.png")).convert("L")))
                             for f in files])[:, None].float() / 255
        latent_masks = torch.nn.functional.adaptive_avg_pool2d(masks, mean.shape[-2:])
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    optimizer = torch.optim.AdamW(params, lr=recipe["learning_rate"])
    outside_weight = recipe.get("masked_loss_weight", 0.05)
    prior = recipe.get("masked_prior_preservation_weight", 0.0) if masked else 0.0
    gamma, batch = recipe.get("snr_gamma"), recipe["batch_size"]
    dropout = recipe.get("caption_dropout", 0.0)

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids)[0]

    def weighted(values, weights):
        weights = weights.expand_as(values)
        return (values * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp(min=1e-12)

    seconds = []
    for step in range(steps):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(step)
        index = torch.randint(0, len(files), (batch,), generator=generator)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) \
            * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        texts = [captions[i] for i in index.tolist()]
        if dropout:
            dropped = (torch.rand(batch, generator=generator) < dropout).tolist()
            texts = ["" if drop else text for text, drop in zip(texts, dropped)]
        hidden = encode(texts)
        prediction = unet(noisy, timesteps, hidden).sample.float()
        if masked:
            mask = latent_masks[index]
            loss = weighted((prediction - noise) ** 2, outside_weight + (1 - outside_weight) * mask)
        else:
            loss = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))
        if prior:
            with torch.no_grad():
                for layer in lora_layers:
                    layer.enable_adapters(False)
                base = unet(noisy, timesteps, encode(texts)).sample.float()
                for layer in lora_layers:
                    layer.enable_adapters(True)
            loss = loss + prior * weighted((prediction - base) ** 2, 1 - mask)
        if gamma:
            snr = compute_snr(scheduler, timesteps)
            loss = loss * torch.clamp(snr, max=gamma) / snr
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert math.isfinite(float(loss.detach().mean()))
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def loramix_step_seconds(name: str, steps: int, warmup: int, folder: Path, **keys) -> list[float]:
    """loramix's own loop on the recipe (`keys` replacing its keys): each step's seconds after step `warmup`, from
    its log."""
    from loramix.train.loop import train
    from loramix.train.recipe import make_recipe

    overrides = {"steps": steps, "sample_every": 0, "final_samples": False, "checkpoint_every": 0,
                 "output": str(folder / f"{name}-loop"), **keys}
    train(make_recipe(ROOT / "recipes" / f"{name}.toml", overrides))
    rows = [json.loads(line) for line in (folder / f"{name}-loop" / "train_log.jsonl").read_text().splitlines()]
    seconds = {row["step"]: row["seconds"] for row in rows}
    return [seconds[step] - seconds[step - 1] for step in range(warmup + 1, steps + 1)]


def loop(args) -> None:
    """Each loop `--loop-runs` times, alternating (loramix, plain, loramix, …), each run in a process of its own
    as a user's run is: in one process the loop that runs second inherits the first one's heap, and glibc's
    malloc thresholds, which moved either loop's step by 10-15%. A run's figure is its median step: the shared
    2-core machine slows for stretches of seconds, which a run's total time takes in whole and a median of its
    steps does not. Runs of the same loop still differ by up to a third from one process to the next, so the
    ratio is read from each loop's median run, with the ratio of every alternating pair beside it."""
    name = args.recipes.split(",")[0]
    ours, plain = [], []
    for _ in range(args.loop_runs):
        for which, into in (("loramix", ours), ("plain", plain)):
            command = [sys.executable, __file__, "--loop-worker", which, "--recipes", name,
                       "--loop-steps", str(args.loop_steps), "--folder", str(args.folder)]
            run = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            into.append(1 / statistics.median(run))
    pairs = sorted(a / b for a, b in zip(ours, plain))
    ours_rate, plain_rate = statistics.median(ours), statistics.median(plain)
    print(f"training loop, recipes/{name}.toml, steps 11-{args.loop_steps}, {args.loop_runs} alternating runs of "
          f"each loop, each run a process of its own, steps/s of the median run: loramix {ours_rate:.2f}, plain "
          f"diffusers + peft {plain_rate:.2f}, loramix ÷ plain ×{ours_rate / plain_rate:.2f} (each pair of runs: "
          f"{', '.join(f'×{r:.2f}' for r in pairs)})")


def batches(args) -> None:
    """What a step costs at each batch size of `--batches`: loramix's loop on the first recipe, the recipe's
    other keys unchanged, in this one process; the sizes run in order and then in reverse, a size's figure the
    mean of its two median steps, so that neither the first run's cold start nor the heap later runs inherit
    favours one size."""
    from loramix.util.memory import return_freed_memory_to_the_system

    return_freed_memory_to_the_system()  # the process setting the loramix command makes
    name = args.recipes.split(",")[0]
    sizes = [int(size) for size in args.batches.split(",")]
    medians = {size: [] for size in sizes}
    for order in (sizes, sizes[::-1]):
        for size in order:
            seconds = loramix_step_seconds(name, args.loop_steps, 10, args.folder, batch_size=size)
            medians[size].append(statistics.median(seconds))
    step = {size: statistics.mean(values) for size, values in medians.items()}
    first = sizes[0]
    print(f"recipes/{name}.toml, steps 11-{args.loop_steps} at each batch size, the mean of two runs' median step")
    print(f"{'batch':>5} {'s/step':>7} {'images/s':>8} {'× batch ' + str(first):>10}")
    for size in sizes:
        ratio = (size / step[size]) / (first / step[first])
        print(f"{size:>5} {step[size]:>7.3f} {size / step[size]:>8.1f} {ratio:>9.2f}×")


def loop_worker(args) -> None:
    """One run of one loop, its step seconds printed as JSON (for `loop`)."""
    name = args.recipes.split(",")[0]
    if args.loop_worker == "loramix":
        from loramix.util.memory import return_freed_memory_to_the_system

        return_freed_memory_to_the_system()  # the process setting the loramix command makes
        seconds = loramix_step_seconds(name, args.loop_steps, 10, args.folder)
    else:
        seconds = plain_step_seconds(recipe_of(name), args.loop_steps, 10)
    print(json.dumps(seconds))


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="mustache,lipstick,glasses")
    parser.add_argument("--steps", help="Step counts to train, e.g. 150,300,600 (default: each recipe's own).")
    parser.add_argument("--set", choices=tuple(SETS), default="fresh")
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "time-to-quality")
    parser.add_argument("--loop-steps", type=int, default=150)
    parser.add_argument("--loop-runs", type=int, default=5, help="Runs of each loop, alternating.")
    parser.add_argument("--loop-only", action="store_true")
    parser.add_argument("--batches", help="Batch sizes, e.g. 8,16,32: only what a step of the first recipe costs at "
                                          "each (images per second against the first size's).")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--loop-worker", choices=("loramix", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.loop_worker:
        return loop_worker(args)
    if args.batches:
        return batches(args)
    if not args.loop_only:
        quality(args)
    if not args.quality_only:
        loop(args)


if __name__ == "__main__":
    main()
