"""Orthogonal adaptation: LoRAs that add without interfering, because each reads its own input directions.

Po, Yang, Aberman and Wetzstein, "Orthogonal Adaptation for Modular Customization of Diffusion Models", CVPR 2024
(arXiv 2312.02432).

The paper writes a concept's residual as Δθᵢ = Aᵢ·Bᵢᵀ with Bᵢ fixed and trains Aᵢ alone; concepts trained apart
interfere little when Bᵢᵀ·Bⱼ ≈ 0, which a shared random orthogonal basis gives exactly. In LoRA's names: every
layer of input size n shares one orthogonal basis O ∈ ℝⁿˣⁿ, the same for every LoRA ever trained (it is drawn
from a fixed seed). A LoRA trained in slot s fixes its down-projection to Aₛ = (O's columns s·r … s·r + r − 1)ᵀ
and trains only its up-projection B: ΔWₛ = B·Aₛ. Two LoRAs in different slots then satisfy Aₛ·Aₜᵀ = 0, so on an
input x = Aₜᵀ·c that the second one reads, the first adds ΔWₛ·x = B·Aₛ·Aₜᵀ·c = 0.
"""

from __future__ import annotations

import torch

from loramix.errors import LoramixError

# The shared seed: every LoRA trained with a slot, by anyone, draws the same basis for a layer of a given size.
BASIS_SEED = 20231204


def orthogonal_basis(size: int) -> torch.Tensor:
    """The shared orthogonal basis O (size × size, float64) of layers whose input has `size` features: the Q of
    a seeded Gaussian matrix's QR decomposition, its columns' signs fixed by R's diagonal (so O is unique and
    Haar-distributed)."""
    generator = torch.Generator().manual_seed(BASIS_SEED + size)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def slot_count(size: int, rank: int) -> int:
    """How many LoRAs of `rank` can each have their own directions in a layer whose input has `size` features."""
    return size // rank


def slot_down(size: int, rank: int, slot: int) -> torch.Tensor:
    """The fixed down-projection A (rank × size, float64) of `slot`: its rows are O's columns s·r … s·r + r − 1."""
    if not 0 <= slot < slot_count(size, rank):
        raise LoramixError(f"orthogonal_slot {slot}: a layer with {size} input features holds "
                           f"{slot_count(size, rank)} slots of rank {rank}")
    return orthogonal_basis(size)[:, slot * rank:(slot + 1) * rank].T.contiguous()


def name_slot(name: str, slots: int) -> int:
    """The slot a LoRA named `name` takes when its recipe asks for one by name: the name's SHA-256, read as a
    number, modulo the `slots` its smallest layer holds. The same name takes the same slot on every machine; two
    names may still share one (`check_distinct_slots` refuses such a sum)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % slots


def check_distinct_slots(slots: list[tuple[str, int | None]]) -> None:
    """Refuse a sum in which two LoRAs were trained in the same orthogonal slot: they read the same directions,
    and their sum interferes as two ordinary LoRAs' does. `slots`: each file with its slot (None: no slot)."""
    taken: dict[int, str] = {}
    for path, slot in slots:
        if slot is None:
            continue
        if slot in taken and taken[slot] != path:
            raise LoramixError(f"{path}: trained in orthogonal slot {slot}, which {taken[slot]} in the same sum "
                               f"already takes; retrain one of them with another orthogonal_slot")
        taken[slot] = path
