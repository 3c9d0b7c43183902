"""Single-file checkpoints in the original (CompVis / Stability) layout, as A1111 and ComfyUI users keep them,
loaded with no network.

diffusers' `from_single_file` converts the original layout's keys itself, but fetches the pipeline's configs
and tokenizers from the hub unless it is given them. loramix gives it the ones it ships, for the architecture
the file's header names (loramix.models.architectures).
"""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.models.architectures import architecture_folder, recognise, tokenizers


def load_single_file(path: Path, dtype, quantize: str, quantize_convs: bool, device: torch.device, status,
                     config: Path | None = None):
    """The pipeline a single-file checkpoint holds, offline. Quantized, it loads in the precision it is stored
    in (diffusers converts the whole file at once) and each model is then quantized one layer at a time.
    `config`, a diffusers folder of the same architecture (its weights are not read), gives the model configs
    and tokenizers instead of the published ones shipped with loramix: for checkpoints of other sizes."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loramix.models.placement import place_models, quantize_loaded
    from loramix.models.precision import choose_dtype, name_of, stored_dtype

    path = Path(path)
    architecture = recognise(path)
    dtype = choose_dtype(dtype, [path], device)
    status(f"loading {path.name} ({architecture.name} single file) in {name_of(dtype)}"
           + (f", {quantize}" if quantize != "none" else ""))
    pipeline_class = StableDiffusionXLPipeline if architecture.sdxl else StableDiffusionPipeline
    extra = {} if architecture.sdxl else {"safety_checker": None, "requires_safety_checker": False}
    if config is None:
        config, extra = architecture_folder(architecture.folder), {**extra, **tokenizers(architecture)}
    # Loaded as stored, then quantized or cast a tensor at a time: never two precisions of a model at once.
    pipeline = pipeline_class.from_single_file(str(path), config=str(config), local_files_only=True,
                                               dtype=stored_dtype(path), **extra)
    quantize_loaded(pipeline, quantize, quantize_convs, dtype, status)
    return place_models(pipeline, dtype, device)
