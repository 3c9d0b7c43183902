"""Loading a base as a diffusers pipeline: the toy base, a local diffusers folder, a single-file checkpoint
or a hub id (where there is a network)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from loramix.errors import LoramixError
from loramix.toybase import TOY_NAME


class BaseLoadError(LoramixError):
    """A base loramix cannot load."""


def load_pipeline(base: str | os.PathLike = TOY_NAME, dtype: torch.dtype = torch.float32):
    """A Stable Diffusion (1.x, 2.x or XL) pipeline for `base`, without safety checker."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from loramix import toybase

    spec = str(base)
    if spec == TOY_NAME:
        return toybase.load_pipeline(TOY_NAME, dtype)
    path = Path(spec)
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise BaseLoadError(f"base {spec}: a folder without model_index.json is not a diffusers pipeline")
            pipeline = DiffusionPipeline.from_pretrained(spec, dtype=dtype, local_files_only=True,
                                                         **_no_safety_checker(path))
        elif path.suffix in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
            if path.suffix != ".safetensors":
                raise BaseLoadError(f"base {spec}: only .safetensors checkpoints are read (pickle files can run code)")
            if not path.is_file():
                raise BaseLoadError(f"base {spec}: no such file")
            pipeline = StableDiffusionPipeline.from_single_file(spec, dtype=dtype, safety_checker=None,
                                                                requires_safety_checker=False)
        elif spec.count("/") == 1 and not path.exists():
            pipeline = DiffusionPipeline.from_pretrained(spec, dtype=dtype)  # a hub id
        else:
            raise BaseLoadError(f"base {spec}: not 'toy', a diffusers folder, a .safetensors file or a hub id")
    except BaseLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BaseLoadError(f"base {spec}: cannot load it ({first_line})") from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _no_safety_checker(folder: Path) -> dict:
    import json

    index = json.loads((folder / "model_index.json").read_text())
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def is_sdxl(pipeline) -> bool:
    return getattr(pipeline, "text_encoder_2", None) is not None


def native_resolution(pipeline) -> int:
    return pipeline.unet.config.sample_size * pipeline.vae_scale_factor


def default_steps_and_guidance(base: str | os.PathLike) -> tuple[int, float]:
    from loramix.toybase import DEFAULT_GUIDANCE, DEFAULT_STEPS

    return (DEFAULT_STEPS, DEFAULT_GUIDANCE) if str(base) == TOY_NAME else (30, 7.0)
