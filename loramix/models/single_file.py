"""Single-file checkpoints in the original (CompVis / Stability) layout, as A1111 and ComfyUI users keep them,
loaded with no network and a model at a time.

    header ──► the architecture (loramix.models.architectures) ──► its configs: each model built empty
           ──► every weight each model needs is in the file, at the shape the config says (else one line)
    text encoders, UNet, VAE, one after another:  read a tensor ──► cast or quantize it ──► place it

diffusers' `from_single_file` converts the whole checkpoint at once and builds the models from it, so its
peak holds the file and the models together (SDXL: 2–3 GB above loading the same weights from a folder).
Here the conversion is the table of `formats.original_layout.original_sources`, read one tensor at a time,
so the peak is the folder's. The configs and tokenizers are the ones shipped with loramix for the published
architectures, or a diffusers folder's (`config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from loramix.errors import BaseLoadError
from loramix.formats.original_layout import Source, original_sources
from loramix.models.architectures import Architecture, architecture_folder, recognise, tokenizers
from loramix.models.placement import MODELS, SAID, only_these
from loramix.util.progress import Status


def load_single_file(path: Path, dtype, quantize: str, quantize_convs: bool, device: torch.device, status: Status,
                     config: Path | None = None, skip: tuple[str, ...] = ()):
    """The pipeline a single-file checkpoint holds, offline, each model converted from the file a tensor at a
    time: in `dtype`, or with `quantize` its UNet and text encoders quantized as they are read. `config`, a
    diffusers folder of the same architecture (its weights are not read), gives the model configs and
    tokenizers instead of the published ones shipped with loramix: for checkpoints of other sizes. The models
    named in `skip` are not read (None in the pipeline)."""
    from loramix.models.precision import choose_dtype, name_of
    from loramix.models.tensor_reader import REOPEN_BYTES, REOPEN_BYTES_UNQUANTIZED, TensorReader

    path = Path(path)
    architecture = recognise(path)
    dtype = choose_dtype(dtype, [path], device)
    folder = Path(config) if config is not None else architecture_folder(architecture.folder)
    empty = _empty_models(folder)
    sources = original_sources(*(empty.get(name) for name in MODELS))
    models = {name: model for name, model in empty.items() if name not in skip}
    reader = TensorReader([path], REOPEN_BYTES if quantize != "none" else REOPEN_BYTES_UNQUANTIZED)
    _check_header(path, architecture, models, sources, reader.shapes())
    status(f"loading {path.name} ({architecture.name} single file) in {name_of(dtype)}"
           + (f", {quantize}" if quantize != "none" else "") + only_these(list(models), skip))
    try:
        # Text encoders first: quantized, they are small before the UNet arrives.
        for number, name in enumerate(sorted(models, key=("text_encoder", "text_encoder_2", "unet", "vae").index)):
            status(f"converting the {SAID[name]} ({number + 1} of {len(models)})")
            read = _reader(reader, sources[name], device)
            if quantize != "none" and name != "vae":
                from loramix.models.quantized_load import fill_quantized

                progress = (lambda layers: status.bar(layers, f"quantizing the UNet to {quantize}")) \
                    if name == "unet" else iter
                fill_quantized(models[name], read, quantize, quantize_convs and name == "unet", dtype, device,
                               progress)
            else:
                progress = (lambda keys: status.bar(keys, "converting the UNet")) if name == "unet" else iter
                _fill(models[name], read, dtype, device, progress)
    finally:
        reader.close()
    return _pipeline(folder, architecture, {**dict.fromkeys(name for name in empty if name in skip), **models},
                     config is not None)


def _empty_models(folder: Path) -> dict[str, nn.Module]:
    """The pipeline's models built from `folder`'s configs on the meta device: shapes and names, no weights."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    index = json.loads((folder / "model_index.json").read_text())
    models = {}
    with init_empty_weights():
        for name in MODELS:
            if name not in index:
                continue
            library, class_name = index[name]
            if library == "diffusers":
                model_class = getattr(diffusers, class_name)
                models[name] = model_class.from_config(model_class.load_config(str(folder / name)))
            else:
                model_class = getattr(transformers, class_name)
                models[name] = model_class(transformers.CLIPTextConfig.from_pretrained(str(folder / name)))
    return models


def _check_header(path: Path, architecture: Architecture, models: dict[str, nn.Module],
                  sources: dict[str, dict[str, Source]], stored: dict[str, tuple[int, ...]]) -> None:
    """Every weight the models need is in the file at the shape their configs give (`stored`, from the header
    alone): a checkpoint that is incomplete or of other sizes is refused before any model is filled."""
    for name, model in models.items():
        for weight, tensor in model.state_dict().items():
            source = sources[name][weight]
            if source.key not in stored:
                raise BaseLoadError(f"base {path}: holds no {source.key}, which the {architecture.name} "
                                    f"{SAID[name]} needs: not a whole {architecture.name} checkpoint")
            needed = source.stored_shape(tuple(tensor.shape))
            if stored[source.key] != needed and not (source.as_conv and stored[source.key] == needed[:-2]):
                raise BaseLoadError(f"base {path}: {source.key} is {list(stored[source.key])} where the "
                                    f"{architecture.name} {SAID[name]} has {list(needed)}: a checkpoint of other "
                                    "sizes than the published architecture's")


def _reader(reader, sources: dict[str, Source], device: torch.device):
    def read(weight: str) -> torch.Tensor:
        source = sources[weight]
        return source.read(reader.get(source.key, device))
    return read


def _fill(model: nn.Module, read, dtype: torch.dtype, device: torch.device, progress=iter) -> None:
    """Every weight of an empty model read and cast to `dtype` one at a time (integers stay as stored)."""
    from accelerate.utils import set_module_tensor_to_device

    for key in progress(list(model.state_dict())):
        # dtype given: accelerate would otherwise cast to the empty model's own (fp32) dtype; integers stay
        set_module_tensor_to_device(model, key, device, value=read(key), dtype=dtype)
    model.requires_grad_(False).eval()


def _pipeline(folder: Path, architecture: Architecture, models: dict[str, nn.Module | None], own_tokenizers: bool):
    """The pipeline of the filled models, with the scheduler (and tokenizers) of `folder`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if architecture.sdxl else StableDiffusionPipeline
    extra = {} if architecture.sdxl else {"safety_checker": None, "requires_safety_checker": False}
    if not own_tokenizers:
        extra.update(tokenizers(architecture))
    return pipeline_class.from_pretrained(str(folder), local_files_only=True, **models, **extra)
