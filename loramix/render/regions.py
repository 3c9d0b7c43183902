"""Regions for regional composition: each LoRA's mask at latent resolution, and the blend of noise predictions.

A LoRA acts only inside its region. At every denoising step each active LoRA k gives its own guided noise
prediction ε_k, the base (no LoRA) gives ε_base, and the step takes

    ε = (1 − Σ_k m̂_k)·ε_base + Σ_k m̂_k·ε_k,      m̂_k = m_k / max(1, Σ_j m_j)      (per latent pixel)

m_k ∈ [0, 1] is the LoRA's mask averaged over each latent pixel's 8×8 (the VAE's factor) image pixels. Where
masks overlap past 1 they are scaled down together, so the weights of a pixel never sum past 1 and ε stays
an affine mix of predictions; where they cover less, the base fills the rest. As in ComfyUI's masked LoRA
hooks and Mix-of-Show's regional sampling, the mix is of predictions, never of weights: each LoRA sees the
whole latent, so its region's edges get a context, not a seam.

A mask of ones everywhere gives ε = ε_k (the LoRA's own render), a mask of zeros gives ε_base (the base's
render): both hold exactly, since 1·x, 0·x and x + 0 are exact in floating point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from loramix.errors import LoramixError
from loramix.specs import MASK, WeightedFile


@dataclass(frozen=True)
class Regions:
    """The normalised masks m̂_k of the LoRAs of one render."""

    masks: torch.Tensor  # (K, 1, 1, h, w): one per LoRA, broadcast over the batch and the latent channels

    @property
    def base_share(self) -> torch.Tensor:
        return 1 - self.masks.sum(0)  # (1, 1, h, w): what no LoRA covers

    @property
    def needs_base(self) -> bool:
        """False when the masks cover every latent pixel: the base's prediction would be weighted by 0."""
        return bool((self.base_share > 0).any())

    def acting(self) -> list[int]:
        """The LoRAs whose region is not empty: only they need a UNet call."""
        return [k for k in range(len(self.masks)) if self.masks[k].any()]

    def blend(self, base: torch.Tensor | None, predictions: dict[int, torch.Tensor]) -> torch.Tensor:
        """ε = (1 − Σ m̂_k)·ε_base + Σ m̂_k·ε_k over the acting LoRAs (`predictions`: k → ε_k, (B, C, h, w))."""
        blended = sum(self.masks[k] * noise for k, noise in predictions.items())
        return blended if base is None else self.base_share * base + blended


def regions_of(files: list[WeightedFile], width: int, height: int, scale: int) -> Regions:
    """Each file's mask (`a.safetensors:0.8#mask.png`, see `check_masks`) on the latent grid of a width × height
    image."""
    masks = torch.stack([load_mask(f.mask, width, height, scale) for f in files])  # (K, h, w)
    return Regions(normalise(masks)[:, None, None])


def load_mask(path: str, width: int, height: int, scale: int) -> torch.Tensor:
    """A greyscale or colour image (white: the region) of any size → (height/scale, width/scale) in [0, 1].

    The image is resized to width × height, then each latent pixel takes the mean of its scale × scale
    pixels (area averaging), so a region's edge becomes a soft edge, not a jagged one."""
    from PIL import Image

    grey = read_mask(path).resize((width, height), Image.Resampling.BOX)
    pixels = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).float().view(1, height, width) / 255
    return torch.nn.functional.avg_pool2d(pixels, scale)[0]  # (h, w)


def read_mask(path: str):
    """The mask image as greyscale (white: the region), or an error naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path).expanduser()) as image:
            return image.convert("L")
    except FileNotFoundError:
        raise LoramixError(f"mask {path}: no such file") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise LoramixError(f"mask {path}: cannot read it as an image ({e})") from None


def normalise(masks: torch.Tensor) -> torch.Tensor:
    """m̂_k = m_k / max(1, Σ_j m_j): overlaps shared out so no pixel's weights sum past 1."""
    return masks / masks.sum(0).clamp(min=1)


def check_masks(files: list[WeightedFile], method: str) -> None:
    """Before anything renders: regional composition has a readable mask for every LoRA, and no other method
    is given one (it would be ignored)."""
    if method != "regional":
        masked = [f for f in files if f.mask is not None]
        if masked:
            raise LoramixError(f"{masked[0].spec}: only --method regional uses masks (this render's method is "
                               f"{method})")
        return
    for f in files:
        if f.mask is None:
            raise LoramixError(f"--method regional: {f.name} has no region; give it a mask as "
                               f"{f.spec}{MASK}mask.png (white: where it acts)")
        read_mask(f.mask)
