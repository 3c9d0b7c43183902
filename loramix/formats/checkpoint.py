"""Model checkpoints as `extract` and `bake` read and write them: which weight tensor is which adapter module.

Two layouts hold a Stable Diffusion model:

- a diffusers folder: one safetensors file per component, keys as the models name their parameters
  (`unet/diffusion_pytorch_model.safetensors`: `down_blocks.0.attentions.0.proj_in.weight`);
- a single original-layout (SGM / ldm) file, as A1111 and ComfyUI load it: `model.diffusion_model.` UNet keys
  in SGM block names (`input_blocks.1.1.proj_in.weight`), `cond_stage_model.transformer.` (SD 1.x) or
  `conditioner.embedders.0.transformer.` (SDXL) for CLIP-L. SDXL's second text encoder is OpenCLIP there,
  with fused q/k/v: it is not mapped, so its modules are left alone (extract) or refused (bake).

SGM block names map to diffusers' by the same table kohya's SDXL names use (`kohya._sgm_to_diffusers`), which a
test checks against diffusers' own converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loramix.errors import LoramixError
from loramix.formats.kohya import flatten_path, kohya_module_path
from loramix.lora.adapter import canonical_path

WEIGHT = ".weight"
DIFFUSERS_FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
                   "text_encoder_2": "text_encoder_2/model.safetensors"}
SINGLE_FILE_PREFIXES = (("model.diffusion_model.", "unet"), ("cond_stage_model.transformer.", "text_encoder"),
                        ("conditioner.embedders.0.transformer.", "text_encoder"))
# Tensors that only a quantized checkpoint holds (bitsandbytes' 4- and 8-bit states, GGUF-style scales).
QUANTIZED_MARKERS = (".absmax", ".quant_map", ".quant_state", ".SCB", ".weight_format", ".nested_absmax")


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    component: str | None  # None: a single original-layout file holding every component

    def module_of(self, key: str) -> str | None:
        """The adapter module key (`unet.<diffusers path>`) whose weight this tensor is, or None."""
        if not key.endswith(WEIGHT):
            return None
        name = key[: -len(WEIGHT)]
        if self.component is not None:
            return f"{self.component}.{canonical_path(self.component, name)}"
        for prefix, component in SINGLE_FILE_PREFIXES:
            if name.startswith(prefix):
                rest = name[len(prefix):]
                if component == "unet":
                    return f"unet.{kohya_module_path('unet', flatten_path(rest))}"
                return f"{component}.{canonical_path(component, rest)}"
        return None


def checkpoint_files(path: str | Path) -> list[CheckpointFile]:
    """The weight files of a diffusers folder (per component) or a single `.safetensors` checkpoint."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise LoramixError(f"{path}: not a .safetensors checkpoint or a diffusers folder")
        return [CheckpointFile(path, None)]
    if not path.is_dir():
        raise LoramixError(f"{path}: no such checkpoint file or folder")
    files = [CheckpointFile(path / name, component) for component, name in DIFFUSERS_FILES.items()
             if (path / name).is_file()]
    if not files:
        raise LoramixError(f"{path}: a folder without {DIFFUSERS_FILES['unet']}: not a diffusers checkpoint folder "
                           "(sharded and .bin weights are not read)")
    return files


def is_quantized_key(key: str) -> bool:
    return any(marker in key for marker in QUANTIZED_MARKERS)
