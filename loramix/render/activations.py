"""What a pipeline's layers read while each LoRA renders its own prompts: the Gram matrix G = Σ x·xᵀ / n of the
inputs of every Linear layer that activation-matched fusion solves (loramix.lora.fusion).

    for each LoRA i:  put LoRA i alone on the base (at its weight) ──► render its prompts (both halves of
                      classifier-free guidance, every denoising step) ──► at each layer, every input vector x
                      of every token adds x·xᵀ ──► Gᵢ = the sum / the number of vectors

Mix-of-Show records each concept's inputs through its own fine-tuned model, as here: the inputs a fused layer
must keep answering as that LoRA did are the ones it meets when that LoRA's concept is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile, check_prompt_names
from loramix.render.core import RenderSettings, render

RECORD_SEEDS = (0, 1, 2, 3)  # images rendered per prompt while recording


@dataclass(frozen=True)
class FusionPrompts:
    """The prompts that call up one LoRA, and where they came from (for messages)."""

    prompts: tuple[str, ...]
    source: str  # "--lora-prompt" or "its trigger words"


def fusion_prompts(files: list[WeightedFile], given: dict[str, list[str]], read) -> list[FusionPrompts]:
    """Each file's prompts: those `given` for it (by its name, as in `<lora:NAME>`, or its path), else its
    trigger words (`read(path)` gives its adapter); a file with neither is refused, as is a name no file has."""
    from loramix.formats.metadata import META_TRIGGER

    check_prompt_names(files, given)
    chosen = []
    for wf in files:
        mine = given.get(wf.path) or given.get(wf.name)
        trigger = "" if mine else read(wf.path).metadata.get(META_TRIGGER, "").strip()
        if not mine and not trigger:
            raise LoramixError(f"{wf.path}: fusion and ziplora record each LoRA's layer inputs from prompts that "
                               "call it up, and this file names no trigger words: give --lora-prompt "
                               f"{wf.name}=PROMPT")
        chosen.append(FusionPrompts(tuple(mine), "--lora-prompt") if mine
                      else FusionPrompts((trigger,), "its trigger words"))
    return chosen


def input_grams(layers: dict[str, torch.nn.Module], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """{key: Σ x·xᵀ / n (in × in, float64)} over every input vector each layer in `layers` reads while `run()`
    runs."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def recorder(key: str):
        def record(module, inputs) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (vectors, in)
            sums[key] = sums.get(key, 0) + x.T @ x
            counts[key] += x.shape[0]
        return record

    hooks = [layer.register_forward_pre_hook(recorder(key)) for key, layer in layers.items()]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return {key: sums[key] / counts[key] for key in sums}


def record_fusion_grams(pipeline, loras, files: list[WeightedFile], prompts: list[FusionPrompts], steps: int,
                        guidance: float, size: int, status=None) -> list[dict[str, torch.Tensor]]:
    """Each LoRA's Gram matrices at the layers fusion solves (`lora.fusion.fusable_keys`), recorded while it
    alone renders its prompts at `RECORD_SEEDS` (`loras` is the pipeline's `PipelineLoras`, which has read the
    files once; it is left with no LoRA on)."""
    from loramix.lora.fusion import fusable_keys

    keys = fusable_keys([(loras.read(wf.path), wf.weight) for wf in files])
    layers = {key: loras.layer(key) for key in keys}
    grams = []
    try:
        for number, (weighted, its) in enumerate(zip(files, prompts)):
            if status is not None:
                status(f"recording the inputs of LoRA {number + 1} of {len(files)} ({weighted.name}) over "
                       f"{len(its.prompts) * len(RECORD_SEEDS)} images")
            loras.apply([weighted])
            settings = [RenderSettings(prompt, seed, steps, guidance, size, size)
                        for prompt in its.prompts for seed in RECORD_SEEDS]
            grams.append(input_grams(layers, lambda settings=settings: render(pipeline, settings)))
    finally:
        loras.apply([])
    return grams
