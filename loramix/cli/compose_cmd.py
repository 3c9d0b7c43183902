"""`loramix compose`: weighted combinations of LoRA files, written as one file and/or rendered."""

from __future__ import annotations

from pathlib import Path

import click

from loramix.errors import LoramixError
from loramix.specs import parse_weight_spec

FILE_METHODS = ("exact", "merge-svd", "ties", "dare", "dare_ties")
RENDER_METHODS = ("switch", "composite")
DTYPES = ("fp32", "fp16", "bf16")


@click.command()
@click.argument("specs", nargs=-1, required=True, metavar="FILE[:WEIGHT]...")
@click.option("-o", "--output", type=click.Path(), help="Write the composed LoRA file here.")
@click.option("--method", type=click.Choice(FILE_METHODS + RENDER_METHODS), default="exact", show_default=True,
              help="exact: Σ wᵢ·ΔWᵢ. merge-svd: its best rank-R approximation. ties/dare/dare_ties: peft's merges "
                   "of the full ΔWᵢ (not additive). switch/composite: combine the LoRAs while denoising "
                   "(rendering only).")
@click.option("--rank", type=click.IntRange(min=1),
              help="Reduce to this rank by truncated SVD and report the error. Default: exact keeps the sum of "
                   "ranks, merge-svd takes the largest input rank, ties/dare the sum of ranks.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of each ΔW kept by ties/dare.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the first image (image i uses seed+i) and of dare's random pruning.")
@click.option("--format", "file_format", type=click.Choice(["diffusers", "kohya"]), default="diffusers",
              show_default=True, help="Key naming of the output: diffusers, or kohya for A1111/ComfyUI.")
@click.option("--dtype", type=click.Choice(DTYPES),
              help="Output precision. Default: the inputs' dtype when they agree, else fp32.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Write the file even if an input has NaN or infinite values (exact and --rank only).")
@click.option("--prompt", help="Render images of this prompt with the composition.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=8, show_default=True, help="Images to render.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps. Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@click.option("--base", default="toy", show_default=True,
              help="'toy', a diffusers folder, a .safetensors checkpoint or a hub id.")
@click.option("--quantize", type=click.Choice(["none", "nf4", "int8"]), default="none", show_default=True,
              help="Store the base quantized; the LoRAs then stay unfused (peft adapters) instead of fused.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="switch: denoising steps before the next LoRA takes over.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--sequential", is_flag=True,
              help="Apply the LoRAs one after another, img2img on the previous image (see `loramix edit`).")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="--sequential: how much of each image a stage may change.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=Path("composed"),
              show_default=True, help="Folder for the rendered PNGs and grid.png.")
def compose(specs, output, method, rank, density, seed, file_format, dtype, allow_nonfinite, prompt, count,
            negative_prompt, steps, guidance, base, quantize, every, batch_size, sequential, strength, images) -> None:
    """Combine LoRA files with weights: `loramix compose a.safetensors:0.7 b.safetensors:0.5 -o ab.safetensors`,
    and with --prompt render the combination.

    The default is exact: the result's ΔW is Σ wᵢ·(αᵢ/rᵢ)·Bᵢ·Aᵢ for every module, by concatenating ranks. On a
    full-precision base it is fused into the weights, so rendering costs what the base costs.
    """
    weighted_files = [parse_weight_spec(s) for s in specs]
    if method in RENDER_METHODS and output is not None:
        raise LoramixError(f"--method {method} combines LoRAs while denoising, so there is no file to write: "
                           "drop -o, or use exact, merge-svd, ties or dare")
    if method in RENDER_METHODS and prompt is None:
        raise LoramixError(f"--method {method} combines LoRAs while rendering: give --prompt")
    if sequential and prompt is None:
        raise LoramixError("--sequential renders: give --prompt")
    if output is None and prompt is None:
        raise LoramixError("nothing to do: give -o FILE to write the composition, --prompt to render it, or both")
    if output is not None:
        _write_file(weighted_files, output, method, rank, density, seed, file_format, dtype, allow_nonfinite)
    if prompt is not None:
        _render(weighted_files, prompt, count, negative_prompt, seed, steps, guidance, base, quantize, method, rank,
                density, every, batch_size, sequential, strength, images)


def _write_file(weighted_files, output, method, rank, density, seed, file_format, dtype, allow_nonfinite) -> None:
    import torch

    from loramix.compose import compose_by_method
    from loramix.formats import read_adapter, write_adapter

    adapters = [read_adapter(wf.path) for wf in weighted_files]
    weighted = [(a, wf.weight) for a, wf in zip(adapters, weighted_files)]
    result, report = compose_by_method(weighted, method, rank, density, seed, [wf.path for wf in weighted_files],
                                       allow_nonfinite)
    out_dtype = _output_dtype(dtype, adapters, torch)
    for module in result.modules.values():
        module.down, module.up = module.down.to(out_dtype), module.up.to(out_dtype)
    recipe = " ".join(f"{wf.path}:{wf.weight:g}" for wf in weighted_files)
    write_adapter(result, output, format=file_format,
                  metadata={"loramix_composed_from": recipe, "loramix_compose_method": method})
    click.echo(f"wrote {output}: {len(result.modules)} modules, rank {', '.join(map(str, result.ranks))}, "
               f"{file_format} naming, {str(out_dtype).removeprefix('torch.')}")
    if report is not None:
        click.echo(f"truncation error (relative Frobenius): {report.overall_error:.3e} overall, "
                   f"{max(report.module_errors.values()):.3e} worst module")


def _render(weighted_files, prompt, count, negative_prompt, seed, steps, guidance, base, quantize, method, rank,
            density, every, batch_size, sequential, strength, images) -> None:
    import math

    from tqdm import tqdm

    from loramix.adapters import PipelineLoras, check_memory
    from loramix.cli.quiet import quiet_libraries
    from loramix.multi_lora import render_multi
    from loramix.pipelines import default_steps_and_guidance, load_pipeline, native_resolution
    from loramix.render import RenderSettings, a1111_parameters, image_grid, render, save_png

    quiet_libraries()
    check_memory([wf.path for wf in weighted_files])
    default_steps, default_guidance = default_steps_and_guidance(base)
    pipeline = load_pipeline(base)
    if quantize != "none":
        from loramix.quantize import quantize_model

        quantize_model(pipeline.unet, quantize)
        for encoder in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)):
            if encoder is not None:
                quantize_model(encoder, quantize, quantize_convs=False)
    loras = PipelineLoras(pipeline)
    for wf in weighted_files:  # every file fits the base before anything renders
        loras.read(wf.path)
    if sequential:
        _render_sequential(pipeline, loras, weighted_files, prompt, count, negative_prompt, seed,
                           steps or default_steps, default_guidance if guidance is None else guidance, strength,
                           images, base)
        return
    if not loras.fuse and method in FILE_METHODS and method != "exact":
        raise LoramixError(f"--method {method} fuses a merge into the base weights, which a quantized base cannot "
                           "take without losing it: use exact (unfused adapters) or --quantize none")
    size = native_resolution(pipeline)
    settings = [RenderSettings(prompt, seed + i, steps or default_steps,
                               default_guidance if guidance is None else guidance, negative_prompt, size, size)
                for i in range(count)]
    if method in FILE_METHODS:
        loras.apply(weighted_files, method=method, rank=rank, density=density, seed=seed)
        how = (f"{method} composition fused into the base weights" if loras.fuse
               else f"unfused peft adapters on the {quantize} base")
    else:
        how = f"{method} every {every} steps" if method == "switch" else "composite: guided predictions averaged"
    images.mkdir(parents=True, exist_ok=True)
    sampler = type(pipeline.scheduler).__name__
    lora_weights = {wf.name: wf.weight for wf in weighted_files}
    hashes = {wf.name: loras.hash_of(wf.path) for wf in weighted_files}
    paths = [images / f"{i:05d}-{s.seed}.png" for i, s in enumerate(settings)]
    all_rendered = []
    for start in tqdm(range(0, count, batch_size), desc="rendering", unit="batch", disable=count <= batch_size):
        batch = settings[start : start + batch_size]
        rendered = (render(pipeline, batch) if method in FILE_METHODS
                    else render_multi(pipeline, loras, weighted_files, batch, method, every))
        for s, image, path in zip(batch, rendered, paths[start : start + batch_size]):
            save_png(image, path, a1111_parameters(s, sampler, str(base), lora_weights, hashes))
        all_rendered += rendered
    grid = image_grid(all_rendered, columns=min(8, math.ceil(math.sqrt(count * 2))), scale=2)
    save_png(grid, images / "grid.png")
    click.echo(f"rendered {count} images to {images} ({how})")


def _render_sequential(pipeline, loras, weighted_files, prompt, count, negative_prompt, seed, steps, guidance,
                       strength, images, base) -> None:
    from tqdm import tqdm

    from loramix.edit import edit_sequence, write_stages

    sampler = type(pipeline.scheduler).__name__
    for i in tqdm(range(count), desc="editing", unit="image", disable=count == 1):
        stages = edit_sequence(pipeline, weighted_files, prompt, strength=strength, seed=seed + i, steps=steps,
                               guidance=guidance, negative_prompt=negative_prompt, adapters=loras)
        write_stages(stages, images / f"{i:05d}-{seed + i}", model=str(base), sampler=sampler)
    click.echo(f"rendered {count} sequences of {len(weighted_files) + 1} stages to {images} (each LoRA in turn, "
               f"img2img at strength {strength:g}; stages and strip.png per folder)")


def _output_dtype(choice, adapters, torch):
    if choice is not None:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]
    dtypes = {t.dtype for a in adapters for m in a.modules.values() for t in (m.down, m.up)}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32
