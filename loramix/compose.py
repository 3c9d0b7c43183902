"""Weighted composition of LoRAs: exact addition, its best low-rank approximation, and peft's merges.

Exact addition concatenates ranks. With sᵢ = αᵢ/rᵢ, for every module

    Σ wᵢ·sᵢ·Bᵢ·Aᵢ = [w₁s₁B₁ | w₂s₂B₂ | …] · [A₁; A₂; …] = B·A        (out × R)·(R × in),  R = Σ rᵢ

so a LoRA with up = B, down = A and α = R (scale 1) is the sum itself. peft's
`add_weighted_adapter(combination_type="linear")` and kohya's `merge_lora.py` instead add the Aᵢ and the Bᵢ
separately, which multiplies out to cross terms wᵢwⱼ·Bᵢ·Aⱼ that no input contains.

A smaller rank k is the truncated SVD of B·A, found without forming it: B = Q_b·R_b and Aᵀ = Q_a·R_a
(thin QR), so B·A = Q_b·(R_b·R_aᵀ)·Q_aᵀ and only the R × R middle needs an SVD, U·S·Vᵀ. Then
ΔW_k = (Q_b·U_k·S_k)·(Q_a·V_k)ᵀ, the best rank-k approximation (Eckart–Young), and the relative error is
√(Σ_{i>k} sᵢ²) / √(Σ sᵢ²).

This module imports only torch (and peft's merge utilities for ties/dare) and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loramix.choices import FILE_METHODS, PRUNING_MERGES
from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.lora import LoraAdapter, LoraModule


@dataclass
class SvdReport:
    """Relative Frobenius error ‖ΔW − ΔW_k‖ / ‖ΔW‖ of each module and of all modules together.

    ‖ΔW − ΔW_k‖² is the energy of the singular values dropped, ‖ΔW‖² that of all of them."""

    module_errors: dict[str, float] = field(default_factory=dict)
    dropped_energy: float = 0.0
    total_energy: float = 0.0

    def add(self, key: str, singular_values: torch.Tensor, kept: int) -> None:
        energy = singular_values.double() ** 2
        dropped, total = float(energy[kept:].sum()), float(energy.sum())
        self.module_errors[key] = math.sqrt(dropped / total) if total > 0 else 0.0
        self.dropped_energy += dropped
        self.total_energy += total

    @property
    def overall_error(self) -> float:
        return math.sqrt(self.dropped_energy / self.total_energy) if self.total_energy > 0 else 0.0


Weighted = list[tuple[LoraAdapter, float]]


def compose_exact(weighted: Weighted, names: list[str] | None = None, allow_nonfinite: bool = False) -> LoraAdapter:
    """The LoRA whose ΔW is exactly Σ wᵢ·ΔWᵢ for every module any input targets (fp32 factors)."""
    names = _check(weighted, names, allow_nonfinite)
    return LoraAdapter({key: LoraModule(down, up, float(down.shape[0]))
                        for key, (down, up) in _stacked_factors(weighted).items()})


def compose_svd(weighted: Weighted, rank: int, names: list[str] | None = None,
                allow_nonfinite: bool = False) -> tuple[LoraAdapter, SvdReport]:
    """The best rank-`rank` approximation of Σ wᵢ·ΔWᵢ per module, with its errors."""
    _check(weighted, names, allow_nonfinite)
    _check_rank(rank)
    modules, report = {}, SvdReport()
    for key, (down, up) in _stacked_factors(weighted).items():
        weight_shape = (up.shape[0], *down.shape[1:])
        new_up, new_down, singular_values = truncated_product_svd(up.flatten(1), down.flatten(1), rank)
        modules[key] = _module(new_down, new_up, weight_shape)
        report.add(key, singular_values, new_up.shape[1])
    return LoraAdapter(modules), report


def compose_merge(weighted: Weighted, method: str, rank: int, density: float = 0.5, seed: int = 0,
                  names: list[str] | None = None) -> tuple[LoraAdapter, SvdReport]:
    """peft's TIES or DARE merge of the full ΔWᵢ, brought back to a rank-`rank` LoRA by truncated SVD.

    These are not additive: TIES keeps each ΔWᵢ's largest entries and drops those whose sign disagrees with
    the majority; DARE drops entries at random and rescales the rest. DARE draws from its own generator
    seeded by `seed`, leaving the caller's random state alone.
    """
    from peft.utils import merge_utils

    _check(weighted, names)
    _check_rank(rank)
    if method not in PRUNING_MERGES:
        raise LoramixError(f"unknown merge method {method!r}: choose one of {', '.join(PRUNING_MERGES)}")
    if not 0 < density <= 1:
        raise LoramixError(f"density must be in (0, 1], got {density}")
    modules, report = {}, SvdReport()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for key in _all_keys(weighted):
            present = [(a.modules[key], w) for a, w in weighted if key in a.modules]
            deltas = [module.delta() for module, _ in present]
            module_weights = torch.tensor([w for _, w in present], dtype=torch.float32)
            if method == "ties":
                merged = merge_utils.ties(deltas, module_weights, density)
            elif method == "dare":
                merged = merge_utils.dare_linear(deltas, module_weights, density)
            else:
                merged = merge_utils.dare_ties(deltas, module_weights, density)
            up, down, singular_values = truncated_svd(merged.flatten(1), rank)
            modules[key] = _module(down, up, tuple(merged.shape))
            report.add(key, singular_values, up.shape[1])
    return LoraAdapter(modules), report


def compose_by_method(weighted: Weighted, method: str, rank: int | None = None, density: float = 0.5, seed: int = 0,
                      names: list[str] | None = None,
                      allow_nonfinite: bool = False) -> tuple[LoraAdapter, SvdReport | None]:
    """The composition a user names: `exact` (with `rank`, its SVD), `merge-svd` (the SVD, by default at the
    largest input rank), or peft's TIES / DARE merges (by default at the sum of the input ranks); the SVD
    report when there was a truncation."""
    if method == "exact" and rank is None:
        return compose_exact(weighted, names, allow_nonfinite), None
    if method in ("exact", "merge-svd"):
        return compose_svd(weighted, rank or max(max(a.ranks) for a, _ in weighted), names, allow_nonfinite)
    if method in PRUNING_MERGES:
        return compose_merge(weighted, method, rank or sum(max(a.ranks) for a, _ in weighted), density, seed, names)
    raise LoramixError(f"unknown method {method!r}: choose one of {', '.join(FILE_METHODS)}")


def truncated_product_svd(up: torch.Tensor, down: torch.Tensor, rank: int):
    """Best rank-`rank` factors of up·down (out × R)·(R × in) without forming it: (up_k, down_k, all σ)."""
    q_up, r_up = torch.linalg.qr(up.double())  # (out, R), (R, R)
    q_down, r_down = torch.linalg.qr(down.double().T)  # (in, R), (R, R)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)  # R × R
    k = min(rank, s.shape[0])
    new_up = (q_up @ u[:, :k]) * s[:k]  # (out, k): B = U·S, as peft's svd merge does
    new_down = vh[:k] @ q_down.T  # (k, in)
    return new_up.float(), new_down.float(), s


def truncated_svd(matrix: torch.Tensor, rank: int):
    """Best rank-`rank` factors of a dense matrix: (up_k, down_k, all σ)."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    k = min(rank, s.shape[0])
    return (u[:, :k] * s[:k]).float(), vh[:k].float(), s


def _stacked_factors(weighted: Weighted) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module: A = [A₁; A₂; …] and B = [w₁s₁B₁ | w₂s₂B₂ | …], over the inputs that have it."""
    stacked = {}
    for key in _all_keys(weighted):
        present = [(a.modules[key], w) for a, w in weighted if key in a.modules]
        down = torch.cat([m.down.float() for m, _ in present], dim=0)  # (R, in[, kh, kw])
        up = torch.cat([m.up.float() * (w * m.scale) for m, w in present], dim=1)  # (out, R[, 1, 1])
        stacked[key] = (down, up)
    return stacked


def _module(down: torch.Tensor, up: torch.Tensor, weight_shape: tuple[int, ...]) -> LoraModule:
    """A rank-k module from 2-D factors, reshaped to conv kernels when the weight is one (α = k: scale 1)."""
    k = down.shape[0]
    if len(weight_shape) == 4:
        down = down.reshape(k, *weight_shape[1:])
        up = up.reshape(weight_shape[0], k, 1, 1)
    return LoraModule(down.contiguous(), up.contiguous(), float(k))


def _all_keys(weighted: Weighted) -> list[str]:
    return list(dict.fromkeys(key for adapter, _ in weighted for key in adapter.modules))


def _check_rank(rank: int) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise LoramixError(f"rank must be a whole number ≥ 1, got {rank!r}")


def _check(weighted: Weighted, names: list[str] | None, allow_nonfinite: bool = False) -> list[str]:
    """Validate before computing: finite weights, finite factors (unless allowed), one weight shape per module."""
    if not weighted:
        raise LoramixError("nothing to compose: give at least one LoRA")
    names = names or [f"input {i + 1}" for i in range(len(weighted))]
    if len(names) != len(weighted):
        raise LoramixError(f"{len(names)} names for {len(weighted)} inputs")
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for (adapter, weight), name in zip(weighted, names):
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise LoramixError(f"{name}: weight {weight!r} is not a finite number")
        for key, module in adapter.modules.items():
            if not allow_nonfinite and not (torch.isfinite(module.down).all() and torch.isfinite(module.up).all()):
                raise LoramixError(f"{name}: module {key} has NaN or infinite values; refusing to compose it "
                                   "(--allow-nonfinite composes it anyway)")
            if not math.isfinite(module.alpha):
                raise LoramixError(f"{name}: module {key} has alpha {module.alpha}")
            seen = shapes.setdefault(key, (module.weight_shape, name))
            if seen[0] != module.weight_shape:
                raise IncompatibleAdaptersError(
                    f"module {key}: {seen[1]} changes a weight of shape {seen[0]}, {name} one of shape "
                    f"{module.weight_shape}; they were made for different base models")
    return names
