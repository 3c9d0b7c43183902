"""The Stable Diffusion architectures loramix knows: their published configs and tokenizers (shipped, no weights),
and which one a single-file checkpoint holds.

The configs are a config-only pipeline folder per architecture (`loramix/architectures/sd1`, `sd2`, `sdxl`); the
tokenizers are built from CLIP's byte-pair vocabulary, which every Stable Diffusion tokenizer shares (SD 2.x's
and SDXL's second one pad with "!" instead of the end token).

Which architecture a file holds is read from its header (key names and one shape), never from its tensors:

    model.diffusion_model.*  the UNet: a plain one takes the VAE's latent channels (4), an inpainting one more (9)
    cond_stage_model.transformer.*          CLIP ViT-L          → SD 1.x
    cond_stage_model.model.*                OpenCLIP ViT-H      → SD 2.x (loaded as 2.1: 768 px, v-prediction)
    conditioner.embedders.0.transformer.* + conditioner.embedders.1.model.*   → SDXL base
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from loramix.errors import BaseLoadError
from loramix.formats.safetensors_file import PICKLE_SUFFIXES

# Built-in architectures by the name users give them, and the config-only pipeline folder each has in
# loramix/architectures (the published configs, no weights).
BUILTIN = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}


UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"  # (320, in_channels, 3, 3)
VAE_MOMENTS = "first_stage_model.encoder.conv_out.weight"  # (2 · latent channels, …): a mean and a log-variance


@dataclass(frozen=True)
class Architecture:
    name: str  # as users say it
    folder: str  # its config-only pipeline folder in loramix/architectures
    pad_tokens: tuple[str, ...]  # each tokenizer's padding token, in order
    matches: Callable[[set[str]], bool]

    @property
    def sdxl(self) -> bool:
        return len(self.pad_tokens) == 2


def _prefixed(keys: set[str], *prefixes: str) -> bool:
    return all(any(key.startswith(prefix) for key in keys) for prefix in prefixes)


ARCHITECTURES = (
    Architecture("SDXL", "sdxl", ("<|endoftext|>", "!"), lambda keys: _prefixed(
        keys, "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")),
    Architecture("SD 2.x", "sd2", ("!",), lambda keys: _prefixed(keys, "cond_stage_model.model.")),
    Architecture("SD 1.x", "sd1", ("<|endoftext|>",), lambda keys: _prefixed(keys, "cond_stage_model.transformer.")),
)


def recognise(path: Path) -> Architecture:
    """The architecture of a single-file checkpoint, from its header; anything else is a one-line error that
    says what was found."""
    from safetensors import SafetensorError, safe_open

    if path.suffix in PICKLE_SUFFIXES:
        raise BaseLoadError(f"base {path}: only .safetensors checkpoints are read (pickle files can run code)")
    if not path.is_file():
        raise BaseLoadError(f"base {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            in_channels = f.get_slice(UNET_INPUT).get_shape()[1] if UNET_INPUT in keys else None
            latent_channels = f.get_slice(VAE_MOMENTS).get_shape()[0] // 2 if VAE_MOMENTS in keys else 4
    except (SafetensorError, OSError) as e:
        raise BaseLoadError(f"base {path}: {_damage(str(e))} ({e})") from None
    if any(".lora_" in key or key.startswith(("lora_", "lycoris_")) for key in keys):
        raise BaseLoadError(f"base {path}: a LoRA, not a base model; give it with --lora")
    if in_channels is None:
        prefixes = sorted({key.split(".")[0] for key in keys})[:4]
        raise BaseLoadError(f"base {path}: not a Stable Diffusion checkpoint in the original layout (no "
                            f"model.diffusion_model UNet; its keys start with {', '.join(prefixes) or 'nothing'})")
    if _prefixed(keys, "conditioner.embedders.0.model.") and not _prefixed(keys, "conditioner.embedders.1."):
        raise BaseLoadError(f"base {path}: an SDXL refiner, which loramix does not load (use the SDXL base)")
    if in_channels != latent_channels:
        raise BaseLoadError(f"base {path}: a UNet with {in_channels} input channels (an inpainting or other "
                            "special model), which loramix does not load")
    for architecture in ARCHITECTURES:
        if architecture.matches(keys):
            return architecture
    raise BaseLoadError(f"base {path}: a Stable Diffusion UNet without a text encoder loramix recognises (SD 1.x "
                        "CLIP, SD 2.x OpenCLIP or SDXL's two)")


# What safetensors' header errors mean for a file that was cut short or edited.
_DAMAGE = {"file not fully covered": "truncated or damaged: its data does not end where its header says",
           "invalid header length": "truncated: it ends inside its header",
           "invalid shape, data type, or offset": "damaged: its header gives a tensor a shape its data does not hold"}


def _damage(error: str) -> str:
    return next((meaning for said, meaning in _DAMAGE.items() if said in error), "not a readable safetensors file")


def tokenizers(architecture: Architecture) -> dict:
    """The architecture's tokenizers, built from the CLIP vocabulary shipped with loramix."""
    from transformers import CLIPTokenizer

    vocabulary = architecture_folder("clip-tokenizer")
    names = ("tokenizer", "tokenizer_2")
    return {name: CLIPTokenizer.from_pretrained(str(vocabulary), pad_token=pad)
            for name, pad in zip(names, architecture.pad_tokens)}


def architecture_folder(folder_name: str) -> Path:
    """The config-only pipeline folder of an architecture ("sd1", "sd2", "sdxl") shipped with loramix."""
    return Path(str(resources.files("loramix") / "architectures" / folder_name))


def builtin_config(name: str, component: str) -> dict:
    """The published config of a built-in architecture's component, e.g. ("sd15", "unet")."""
    return json.loads((architecture_folder(BUILTIN[name]) / component / "config.json").read_text())
