"""Loading a base as a diffusers pipeline: a diffusers folder (the shipped toy base is one, by the name
`toy`), a single-file checkpoint, or a hub id (where there is a network); and what rendering needs to know
about it, read from the base itself.

A base folder may carry `loramix.json` beside `model_index.json`, with the steps and guidance it renders
best at, as it carries its scheduler's config: the toy base does. Other bases get Stable Diffusion's usual
30 steps at guidance 7.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from loramix.errors import BaseLoadError, first_line
from loramix.formats.safetensors_file import PICKLE_SUFFIXES
from loramix.models.folder_files import component_dtype, folder_variant, weight_files
from loramix.models.placement import MODELS, only_these, place_models, quantize_loaded
from loramix.util.progress import Status

BUNDLED_BASE = "toy"  # the name of the base that ships inside the package
RENDER_DEFAULTS = "loramix.json"  # a base folder's own steps and guidance
FALLBACK_STEPS, FALLBACK_GUIDANCE = 30, 7.0


@dataclass(frozen=True)
class LoadedBase:
    """A loaded pipeline and what every command that renders with it needs to agree on."""

    pipeline: Any
    name: str  # the model's name as A1111 records it: the checkpoint's or folder's name, not a path
    steps: int
    guidance: float
    size: int  # the native square size in pixels
    sampler: str

    @classmethod
    def of(cls, pipeline, base: str | os.PathLike) -> LoadedBase:
        """What loramix knows of `pipeline`, loaded from `base` (for its name and its folder's defaults)."""
        steps, guidance = render_defaults(base)
        return cls(pipeline, model_name(base), steps, guidance, native_resolution(pipeline),
                   type(pipeline.scheduler).__name__)

    def to(self, device) -> LoadedBase:
        self.pipeline.to(device)
        return self


def bundled_base_path() -> Path:
    return Path(str(resources.files("loramix") / "weights" / BUNDLED_BASE))


def base_path(base: str | os.PathLike) -> Path:
    """Where a base lies: the package's own folder for `toy`, else the path given."""
    return bundled_base_path() if str(base) == BUNDLED_BASE else Path(base)


def resolve_folder(base: str | os.PathLike) -> Path:
    """A base given as `toy` or as a diffusers pipeline folder, as a folder."""
    path = base_path(base)
    if not (path / "model_index.json").is_file():
        if str(base) == BUNDLED_BASE:
            raise BaseLoadError("the toy base is not built in this install: run `loramix build-base`")
        raise BaseLoadError(f"base {base}: not a diffusers pipeline folder (no model_index.json) and not 'toy'")
    return path


def load_base(base: str | os.PathLike = BUNDLED_BASE, dtype: str | torch.dtype | None = None,
              quantize: str = "none", quantize_convs: bool = True, device: torch.device | str | None = None,
              status: Status | None = None, config: Path | None = None) -> LoadedBase:
    return LoadedBase.of(load_pipeline(base, dtype, quantize, quantize_convs, device, status, config), base)


def load_pipeline(base: str | os.PathLike = BUNDLED_BASE, dtype: str | torch.dtype | None = None,
                  quantize: str = "none", quantize_convs: bool = True, device: torch.device | str | None = None,
                  status: Status | None = None, config: Path | None = None, skip: tuple[str, ...] = ()):
    """A Stable Diffusion (1.x, 2.x or XL) pipeline for `base`, without safety checker, on `device` (CPU by
    default). `dtype` ("fp32", "fp16", "bf16"; None: what fits the device, see `precision`) is the precision of
    its weights, or with `quantize` ("nf4", "int8") the compute precision of its quantized UNet and text
    encoders, which are then quantized as they load. `status` hears what is happening, a line at a time, and
    gets a progress bar (a tqdm-like callable) for the layer-by-layer loading. `config` is for single files:
    see `single_file.load_single_file`. The models named in `skip` ("unet", "vae", "text_encoder",
    "text_encoder_2") are not loaded: the pipeline holds None in their place (see `load_models`)."""
    status = status or Status()
    device = torch.device(device or "cpu")
    spec = str(base)
    path = base_path(spec)
    try:
        if spec == BUNDLED_BASE or path.is_dir():
            pipeline = _load_folder(resolve_folder(spec), spec, dtype, quantize, quantize_convs, device, status,
                                    skip)
        elif path.suffix in (".safetensors", *PICKLE_SUFFIXES):
            from loramix.models.single_file import load_single_file

            pipeline = load_single_file(path, dtype, quantize, quantize_convs, device, status, config, skip)
        elif spec.count("/") == 1 and not path.exists():
            from diffusers import DiffusionPipeline

            status(f"loading {spec} from the hub")  # a hub id
            from loramix.models.precision import choose_dtype

            dtype = choose_dtype(dtype, [], device)
            pipeline = DiffusionPipeline.from_pretrained(spec, dtype=dtype, **dict.fromkeys(skip))
            quantize_loaded(pipeline, quantize, quantize_convs, dtype, status)
            pipeline.to(device)
        else:
            raise BaseLoadError(f"base {spec}: not 'toy', a diffusers folder, a .safetensors file or a hub id")
    except BaseLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BaseLoadError(f"base {spec}: cannot load it ({first_line(e, limit=None)})") from e
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_models(base: str | os.PathLike, names: tuple[str, ...], dtype: str | torch.dtype | None = None,
                quantize: str = "none", quantize_convs: bool = True, device: torch.device | str | None = None,
                status: Status | None = None, config: Path | None = None) -> dict[str, Any]:
    """Only the models `names` of the base, loaded as `load_pipeline` loads them: for a pipeline that holds
    some models only while they are needed (training sets the VAE aside once the images are encoded)."""
    pipeline = load_pipeline(base, dtype, quantize, quantize_convs, device, status, config,
                             skip=tuple(m for m in MODELS if m not in names))
    return {name: getattr(pipeline, name) for name in names if getattr(pipeline, name, None) is not None}


def unet_config(base: str | os.PathLike, config: Path | None = None) -> dict:
    """The base's UNet config, read without its weights."""
    path = base_path(base)
    if str(base) == BUNDLED_BASE or path.is_dir():
        folder = resolve_folder(base)
    elif path.suffix == ".safetensors":
        from loramix.models.architectures import architecture_folder, recognise

        folder = Path(config) if config is not None else architecture_folder(recognise(path).folder)
    else:
        from diffusers import UNet2DConditionModel

        return dict(UNet2DConditionModel.load_config(str(base), subfolder="unet"))
    return json.loads((folder / "unet" / "config.json").read_text())


def _load_folder(folder: Path, spec: str, dtype, quantize: str, quantize_convs: bool, device: torch.device,
                 status: Status, skip: tuple[str, ...] = ()):
    from diffusers import DiffusionPipeline

    from loramix.models.precision import choose_dtype, name_of
    from loramix.models.quantized_load import load_text_encoder_quantized, load_unet_quantized

    _refuse_pickled_weights(folder, spec)
    variant = folder_variant(folder)
    stored_models = [c for c in MODELS if (folder / c).is_dir()]
    dtype = choose_dtype(dtype, [f for c in stored_models for f in weight_files(folder / c, variant)], device)
    components = [c for c in stored_models if c not in skip]
    what = f"{model_name(spec)} in {name_of(dtype)}" + (f", {quantize}" if quantize != "none" else "")
    status(f"loading {what}" + (f" (its {variant} files)" if variant else "") + only_these(components, skip))
    loaded = {}
    if quantize != "none":
        # Text encoders first: each passes through memory whole, as stored, before it is quantized, and that
        # is cheaper before the UNet is there too.
        for encoder in ("text_encoder", "text_encoder_2"):
            if encoder in components:
                status(f"quantizing the {encoder.replace('_', ' ')} to {quantize}")
                loaded[encoder] = load_text_encoder_quantized(folder, encoder, variant, quantize, dtype, device)
        unet = None if "unet" in skip else load_unet_quantized(
            folder, variant, quantize, quantize_convs, dtype, device,
            lambda layers: status.bar(layers, f"quantizing the UNet to {quantize}"))
        if unet is not None:
            loaded["unet"] = unet
    # Each model loaded as stored and cast a tensor at a time: diffusers' own casting holds both precisions.
    stored = {c: component_dtype(folder / c, variant) or dtype for c in components}
    pipeline = DiffusionPipeline.from_pretrained(str(folder), dtype={**stored, "default": dtype},
                                                 local_files_only=True, use_safetensors=True, variant=variant,
                                                 **_no_safety_checker(folder),
                                                 **dict.fromkeys(c for c in skip if c in stored_models), **loaded)
    if quantize != "none" and "unet" in components and "unet" not in loaded:  # an old layout: the whole UNet, quantized
        quantize_loaded(pipeline, quantize, quantize_convs, dtype, status, only=("unet",))
    return place_models(pipeline, dtype, device, placed=tuple(loaded))


def _refuse_pickled_weights(folder: Path, spec: str) -> None:
    """A component stored only as a pickle (`diffusion_pytorch_model.bin`, `pytorch_model.bin`) is refused by
    name: loramix never unpickles, whatever the loader's own safeguards."""
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in component.iterdir() if f.is_file()]
        if any(f.suffix == ".safetensors" for f in files):
            continue
        pickled = sorted(f for f in files if f.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise BaseLoadError(f"base {spec}: {component.name}/{pickled[0].name} is a pickle file, which can run "
                                "code when loaded; loramix never unpickles: convert it to .safetensors")


def _no_safety_checker(folder: Path) -> dict:
    index = json.loads((folder / "model_index.json").read_text())
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def render_defaults(base: str | os.PathLike) -> tuple[int, float]:
    """The steps and guidance the base's folder names in `loramix.json`, else Stable Diffusion's usual."""
    path = base_path(base) / RENDER_DEFAULTS
    if not path.is_file():
        return FALLBACK_STEPS, FALLBACK_GUIDANCE
    try:
        defaults = json.loads(path.read_text(encoding="utf-8"))
        return int(defaults["steps"]), float(defaults["guidance"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BaseLoadError(f"{path}: not a render-defaults file with steps and guidance ({e})") from None


def model_name(base: str | os.PathLike) -> str:
    """The model's name as A1111 records it: the checkpoint's name, not a path."""
    path = Path(str(base))
    return path.stem if path.suffix == ".safetensors" else path.name or str(base)


def is_sdxl(pipeline) -> bool:
    """An SDXL pipeline, whether or not its second text encoder is loaded now."""
    return "text_encoder_2" in pipeline.components


def native_resolution(pipeline) -> int:
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor
