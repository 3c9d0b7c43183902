"""Activation-matched fusion of LoRAs: Mix-of-Show's gradient fusion (Gu et al. 2023, "Mix-of-Show:
Decentralized Low-Rank Adaptation for Multi-Concept Customization of Diffusion Models", arXiv 2305.18292, §3.3),
solved in closed form instead of by gradient descent.

For a target layer with base weight W₀, the LoRAs' updates ΔWᵢ (each already times its weight wᵢ) and the
layer's inputs Xᵢ (one column per input vector) recorded while LoRA i renders its own prompts, the fused weight

    W* = argmin_W  Σᵢ ‖(W₀ + ΔWᵢ)·Xᵢ − W·Xᵢ‖² / nᵢ  +  λ·‖W − W₀‖²

keeps what each LoRA does to the inputs it sees, where an exact sum W₀ + Σ ΔWᵢ lets every LoRA act on every
other's inputs too. With Gᵢ = Xᵢ·Xᵢᵀ / nᵢ (in × in; nᵢ input vectors, so a LoRA with longer prompts does not
outweigh the others) the normal equations are (W* − W₀)·(Σᵢ Gᵢ + λI) = Σᵢ ΔWᵢ·Gᵢ, so

    ΔW* = (Σᵢ ΔWᵢ·Gᵢ) · (Σᵢ Gᵢ + λI)⁻¹

W₀ drops out: the fusion needs each LoRA's ΔWᵢ and the Gram matrix of its inputs, nothing of the base. The
ridge λ = ridge · tr(Σᵢ Gᵢ) / in keeps the solve well posed where the inputs span less than the layer's width,
and holds ΔW* at zero (the base) in directions no input visits. A layer only some LoRAs change still counts
every LoRA's inputs: there the others ask for ΔW = 0.

Only Linear layers with plain LoRA updates are fused (a conv's inputs are patches, whose Gram matrix is
in·kh·kw wide); other modules keep their exact sum. This module imports only torch and does no I/O.
"""

from __future__ import annotations

import torch

from loramix.errors import LoramixError
from loramix.lora.adapter import LoraAdapter
from loramix.lora.compose import Weighted, _check, _dense_sums, compose_svd
from loramix.lora.lycoris_modules import FullModule

DEFAULT_RIDGE = 0.03  # chosen on the TUNE seeds and phrasings: 1e-3 kept 15% of pairs, 0.03 46%, 0.3 35%


def fused_delta(deltas: list[torch.Tensor], grams: list[torch.Tensor], ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """ΔW* = (Σᵢ ΔWᵢ·Gᵢ)·(Σᵢ Gᵢ + λI)⁻¹ for one layer: `deltas` (out × in) and `grams` (in × in) in the same
    order, a zero ΔWᵢ for a LoRA that leaves the layer alone. Computed in float64, returned in float32."""
    if len(deltas) != len(grams) or not deltas:
        raise LoramixError(f"fusion needs one Gram matrix per update: {len(deltas)} updates, {len(grams)} matrices")
    total = sum(g.double() for g in grams)
    width = total.shape[0]
    trace = float(total.diagonal().sum())
    if trace <= 0:
        raise LoramixError("fusion: no LoRA's inputs reached this layer (every recorded input was zero)")
    system = total + ridge * trace / width * torch.eye(width, dtype=torch.float64)
    right = sum(d.double() @ g.double() for d, g in zip(deltas, grams))  # (out, in)
    return torch.linalg.solve(system, right.T).T.float()  # the system is symmetric: solve Wᵀ from it


def fusable_keys(weighted: Weighted) -> list[str]:
    """The modules fusion solves: Linear layers (2-D weights) that every input holding them changes with plain
    low-rank factors."""
    keys = list(dict.fromkeys(key for adapter, _ in weighted for key in adapter.modules))
    return [key for key in keys if all(a.modules[key].kind == "LoRA" and not a.modules[key].is_conv
                                       for a, _ in weighted if key in a.modules)]


def recorded_keys(weighted: Weighted, grams: list[dict[str, torch.Tensor]], names: list[str],
                  method: str) -> list[str]:
    """The modules a method that records layer inputs solves (`fusable_keys`), once `grams` is checked to hold
    one set of Gram matrices per LoRA, each with every such module."""
    if len(grams) != len(weighted):
        raise LoramixError(f"{method}: Gram matrices for {len(grams)} LoRAs, {len(weighted)} LoRAs given")
    solved = fusable_keys(weighted)
    for key in solved:
        missing = [name for name, recorded in zip(names, grams) if key not in recorded]
        if missing:
            raise LoramixError(f"{method}: no inputs were recorded for module {key} while {missing[0]} rendered")
    return solved


def compose_fusion(weighted: Weighted, grams: list[dict[str, torch.Tensor]], rank: int | None = None,
                   names: list[str] | None = None, ridge: float = DEFAULT_RIDGE):
    """The fused composition of `weighted` (adapter, weight) pairs, given each input's Gram matrices by module
    key (`grams[i][key]`, from `render.activations`): whole differences, or with `rank` their best rank-`rank`
    approximations (with the SVD report). Modules fusion does not solve keep their exact weighted sum."""
    names = _check(weighted, names)
    solved = recorded_keys(weighted, grams, names, "fusion")
    modules = {}
    for key in solved:
        shape = next(a.modules[key].flat_shape for a, _ in weighted if key in a.modules)
        deltas = [(w * a.modules[key].delta()) if key in a.modules else torch.zeros(shape) for a, w in weighted]
        modules[key] = FullModule(fused_delta(deltas, [recorded[key] for recorded in grams], ridge))
    others = [key for adapter, _ in weighted for key in adapter.modules if key not in solved]
    for key, delta in _dense_sums(weighted, list(dict.fromkeys(others))).items():
        modules[key] = FullModule(delta)
    fused = LoraAdapter(modules, base_version=next((a.base_version for a, _ in weighted if a.base_version), ""))
    if rank is None:
        return fused, None
    return compose_svd([(fused, 1.0)], rank, [names[0]])
