"""`loramix compose`: weighted combinations of LoRA files, written as one file and/or rendered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from loramix.choices import (
    DEFAULT_FORMAT,
    DTYPES,
    FILE_METHODS,
    GENERATION_METHODS,
    OUTPUT_FORMATS,
    QUANTIZE_MODES,
    RECORDED_METHODS,
)
from loramix.cli.options import TAGS_HELP, image_size_options, lora_folders_option
from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile, check_prompt_names, parse_weight_spec
from loramix.render.scheduled import check_method


@click.command()
@click.argument("specs", nargs=-1, required=True, metavar="FILE[:WEIGHT]...")
@click.option("-o", "--output", type=click.Path(), help="Write the composed LoRA file here.")
@click.option("--method", type=click.Choice((*FILE_METHODS, *RECORDED_METHODS, *GENERATION_METHODS)), default="exact",
              show_default=True,
              help="exact: Σ wᵢ·ΔWᵢ. merge-svd: its best rank-R approximation. ties/dare/dare_ties: peft's merges "
                   "of the full ΔWᵢ (not additive). fusion: the update that does what each LoRA does to the layer "
                   "inputs of its own prompts (Mix-of-Show; renders with the base to record them; needs -o). "
                   "ziplora: each LoRA's columns scaled by learned coefficients (ZipLoRA), from the same inputs. "
                   "switch/composite/regional: combine the LoRAs while denoising (rendering only).")
@click.option("--lora-prompt", "lora_prompts", multiple=True, metavar="NAME=PROMPT",
              help="fusion, ziplora: a prompt that calls up the LoRA NAME (its file name without .safetensors), "
                   "to record its layer inputs from; repeat for more prompts or LoRAs. Default: the file's trigger "
                   "words. "
                   "switch, composite, regional: the prompt NAME's own calls are conditioned on (its text-encoder "
                   "LoRA encoding it), once per LoRA; the base's call keeps --prompt. Default: --prompt.")
@click.option("--rank", type=click.IntRange(min=1),
              help="Reduce to this rank by truncated SVD and report the error. Default: exact keeps the sum of "
                   "ranks, merge-svd takes the largest input rank, ties/dare the sum of ranks.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of each ΔW kept by ties/dare.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the first image (image i uses seed+i) and of dare's random pruning.")
@click.option("--format", "file_format", type=click.Choice(OUTPUT_FORMATS), default=DEFAULT_FORMAT,
              show_default=True, help="Output naming. kohya: A1111, ComfyUI, kohya and diffusers load it. diffusers: "
                                      "ComfyUI skips its UNet attention projections. full-diff: ΔW whole, exact "
                                      "for LoHa/LoKr inputs.")
@click.option("--dtype", type=click.Choice(DTYPES),
              help="Output precision. Default: the inputs' dtype when they agree, else fp32.")
@click.option("--allow-nonfinite", is_flag=True,
              help="Write the file even if an input has NaN or infinite values (exact and --rank only).")
@click.option("--prompt", help="Render images of this prompt with the composition. " + TAGS_HELP.replace(
    "a --lora", "a FILE"))
@lora_folders_option
@click.option("-n", "--count", type=click.IntRange(min=1), default=8, show_default=True, help="Images to render.")
@click.option("--negative-prompt", default="", help="What to steer away from.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps. Default: the base's.")
@click.option("--guidance", type=float, help="Classifier-free guidance scale. Default: the base's.")
@image_size_options
@click.option("--base", default="toy", show_default=True,
              help="'toy', a diffusers folder, a .safetensors checkpoint or a hub id.")
@click.option("--base-dtype", type=click.Choice(DTYPES),
              help="--prompt: the base's precision (--dtype is the written file's). Default: what fits the device: "
                   "fp32 on a CPU for bases up to a quarter of its memory, else bf16; bf16 on GPUs that have it.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default="none", show_default=True,
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
def compose(specs, output, method, lora_prompts, rank, density, seed, file_format, dtype, allow_nonfinite, prompt,
            lora_folders, count, negative_prompt, steps, guidance, width, height, base, base_dtype, quantize, every,
            batch_size, sequential, strength, images) -> None:
    """Combine LoRA files with weights: `loramix compose a.safetensors:0.7 b.safetensors:0.5 -o ab.safetensors`,
    and with --prompt render the combination. `a.safetensors:0.8:lbw=INS` adds per-block weights; with --prompt a
    weight may follow a step schedule: `a.safetensors:0.8@0.3-1` (0.8 from 30% of the steps to the end) or
    keyframes `a.safetensors:0@0,1@0.4,1@1` (interpolated).

    The default is exact: the result's ΔW is Σ wᵢ·(αᵢ/rᵢ)·Bᵢ·Aᵢ for every module, by concatenating ranks. On a
    full-precision base it is fused into the weights, so rendering costs what the base costs.
    """
    weighted_files = [parse_weight_spec(s) for s in specs]
    if prompt is not None:
        from loramix.render.prompt_tags import add_weights, split_lora_tags

        prompt, tagged = split_lora_tags(prompt, list(lora_folders) or ["."])
        weighted_files = list(add_weights(tuple(weighted_files), tagged, "--prompt"))
    from loramix.render.regions import check_masks

    check_masks(weighted_files, "sequential" if sequential else method)
    given_prompts = _lora_prompts(lora_prompts, method)
    if method in RECORDED_METHODS and output is None:
        raise LoramixError(f"--method {method} writes a file: give -o FILE (--prompt then renders it)")
    if method in GENERATION_METHODS and output is not None:
        raise LoramixError(f"--method {method} combines LoRAs while denoising, so there is no file to write: "
                           "drop -o, or use exact, merge-svd, ties or dare")
    if method in GENERATION_METHODS and prompt is None:
        raise LoramixError(f"--method {method} combines LoRAs while rendering: give --prompt")
    if prompt is not None and method not in RECORDED_METHODS:
        check_method(weighted_files, "sequential" if sequential else method)
    if sequential and prompt is None:
        raise LoramixError("--sequential renders: give --prompt")
    if output is None and prompt is None:
        raise LoramixError("nothing to do: give -o FILE to write the composition, --prompt to render it, or both")
    if method in GENERATION_METHODS and given_prompts:
        weighted_files = _with_own_prompts(weighted_files, given_prompts, method)
    if method in RECORDED_METHODS:
        grams = _record_grams(weighted_files, given_prompts, steps, base, base_dtype, quantize)
        _write_file(weighted_files, output, method, rank, density, seed, file_format, dtype, allow_nonfinite, grams)
        weighted_files, method = [parse_weight_spec(str(output))], "exact"  # --prompt renders the written file
    elif output is not None:
        _write_file(weighted_files, output, method, rank, density, seed, file_format, dtype, allow_nonfinite)
    if prompt is not None:
        from loramix.render.core import Composition

        composition = Composition("sequential" if sequential else method, rank=rank, density=density, seed=seed,
                                  every=every, strength=strength)
        _render(weighted_files, composition, prompt, count, negative_prompt, seed, steps, guidance, width, height,
                base, base_dtype, quantize, batch_size, images)


def _lora_prompts(options: tuple[str, ...], method: str) -> dict[str, list[str]]:
    """`--lora-prompt NAME=PROMPT` options → {NAME: [PROMPT, …]}, for the methods that use them."""
    if options and method not in RECORDED_METHODS and method not in GENERATION_METHODS:
        raise LoramixError(f"--lora-prompt: --method {method} does not use per-LoRA prompts "
                           f"({', '.join((*RECORDED_METHODS, *GENERATION_METHODS))} do)")
    given: dict[str, list[str]] = {}
    for option in options:
        name, equals, text = option.partition("=")
        if not equals or not name.strip() or not text.strip():
            raise LoramixError(f"--lora-prompt {option!r}: write NAME=PROMPT, e.g. mustache='a face with a mustache'")
        given.setdefault(name.strip(), []).append(text.strip())
    return given


def _with_own_prompts(files: list[WeightedFile], given: dict[str, list[str]], method: str) -> list[WeightedFile]:
    """Each LoRA named by a `--lora-prompt` (its name or its path, as fusion takes them) conditioned on that
    prompt while it renders."""
    check_prompt_names(files, given)
    for name, prompts in given.items():
        if len(prompts) > 1:
            raise LoramixError(f"--lora-prompt {name}: given {len(prompts)} times; --method {method} conditions "
                               "each LoRA on one prompt")
    return [replace(wf, prompt=mine[0]) if (mine := given.get(wf.path) or given.get(wf.name)) else wf for wf in files]


def _record_grams(weighted_files, given_prompts, steps, base, base_dtype, quantize) -> list[dict]:
    """Each LoRA's layer-input Gram matrices, rendered on the base with it alone (see render.activations)."""
    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.models.load import load_base
    from loramix.models.loras import PipelineLoras
    from loramix.render.activations import fusion_prompts, record_fusion_grams

    quiet_libraries()
    status = TerminalStatus()
    loaded = load_base(base, base_dtype, quantize, status=status)
    loras = PipelineLoras(loaded.pipeline)
    prompts = fusion_prompts(weighted_files, given_prompts, loras.read)
    return record_fusion_grams(loaded.pipeline, loras, weighted_files, prompts, steps or loaded.steps,
                               loaded.guidance, loaded.size, status)


def _write_file(weighted_files, output, method, rank, density, seed, file_format, dtype, allow_nonfinite,
                grams=None) -> None:
    from loramix.jobs.compose_file import write_composition

    written = write_composition(weighted_files, output, method, rank, density, seed, file_format, dtype,
                                allow_nonfinite, grams)
    ranks = f"rank {', '.join(map(str, written.ranks))}" if written.ranks else "whole differences"
    click.echo(f"wrote {output}: {written.modules} modules, {ranks}, "
               f"{file_format} naming, {str(written.dtype).removeprefix('torch.')}")
    if file_format == "diffusers":
        click.echo("note: ComfyUI skips the UNet attention projections (to_q, to_k, to_v, to_out) of diffusers "
                   "naming: it maps them only under diffusers' old processor names ('lora key not loaded'). "
                   "--format kohya loads in A1111, ComfyUI, kohya and diffusers.")
    if written.report is not None:
        click.echo(f"truncation error (relative Frobenius): {written.report.overall_error:.3e} overall, "
                   f"{max(written.report.module_errors.values()):.3e} worst module")


def _render(weighted_files, composition, prompt, count, negative_prompt, seed, steps, guidance, width, height,
            base, base_dtype, quantize, batch_size, images) -> None:
    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.models.load import load_base
    from loramix.models.loras import PipelineLoras, check_memory
    from loramix.render.generate import generate
    from loramix.render.prompts import Defaults, PromptRow, plan

    quiet_libraries()
    check_memory([wf.path for wf in weighted_files])
    loaded = load_base(base, base_dtype, quantize, status=TerminalStatus())
    loras = PipelineLoras(loaded.pipeline)
    for wf in weighted_files:  # every file fits the base before anything renders
        loras.read(wf.path)
    if composition.method == "regional":
        from loramix.render.regions import check_triggers

        check_triggers(weighted_files, [prompt], loras, loaded.pipeline.tokenizer)
    if not loras.fuse and composition.method in FILE_METHODS and composition.method != "exact":
        raise LoramixError(f"--method {composition.method} fuses a merge into the base weights, which a quantized "
                           "base cannot take without losing it: use exact (unfused adapters) or --quantize none")
    defaults = Defaults(steps=steps or loaded.steps, guidance=loaded.guidance if guidance is None else guidance,
                        width=width or loaded.size, height=height or loaded.size, n=count, seed=seed,
                        negative_prompt=negative_prompt, loras=tuple(weighted_files))
    jobs = plan([PromptRow(line=0, prompt=prompt)], defaults, flat=True)
    generate(loaded, jobs, images, batch_size=batch_size, loras=loras, progress=True, composition=composition)
    if composition.method == "sequential":
        click.echo(f"rendered {count} sequences of {len(weighted_files) + 1} stages to {images} (each LoRA in turn, "
                   f"img2img at strength {composition.strength:g}; stages and strip.png per folder)")
    else:
        click.echo(f"rendered {count} images to {images} ({composition.describe(loras.fuse, quantize)})")
