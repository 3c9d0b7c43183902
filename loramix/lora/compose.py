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
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.lycoris_modules import FullModule

NOT_ADDITIVE = "DoRA"  # renormalises the weight it lands on: W' = m·(W+ΔW)/‖W+ΔW‖ is no ΔW that adds


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
    for (adapter, _), name in zip(weighted, names):
        other = next((k for k, m in adapter.modules.items() if m.kind != "LoRA"), None)
        if other is not None:
            raise IncompatibleAdaptersError(
                f"{name}: module {other} is {adapter.modules[other].kind}, not two low-rank factors, so ranks "
                "cannot be concatenated: write --format full-diff (exact), or give --rank R (truncated SVD)")
    return LoraAdapter({key: LoraModule(down, up, float(down.shape[0]))
                        for key, (down, up) in _stacked_factors(weighted).items()}, base_version=_base(weighted, names))


def compose_dense(weighted: Weighted, names: list[str] | None = None, allow_nonfinite: bool = False) -> LoraAdapter:
    """Σ wᵢ·ΔWᵢ per module as a whole difference (fp32), for any mix of LoRA, LoHa, LoKr and full modules."""
    names = _check(weighted, names, allow_nonfinite)
    return LoraAdapter({key: FullModule(delta) for key, delta in _dense_sums(weighted).items()},
                       base_version=_base(weighted, names))


def compose_svd(weighted: Weighted, rank: int, names: list[str] | None = None,
                allow_nonfinite: bool = False) -> tuple[LoraAdapter, SvdReport]:
    """The best rank-`rank` approximation of Σ wᵢ·ΔWᵢ per module, with its errors."""
    names = _check(weighted, names, allow_nonfinite)
    _check_rank(rank)
    modules, report = {}, SvdReport()
    low_rank = [key for key in _all_keys(weighted) if all(a.modules[key].kind == "LoRA" for a, _ in weighted
                                                         if key in a.modules)]
    for key, (down, up) in _stacked_factors(weighted, low_rank).items():
        weight_shape = (up.shape[0], *down.shape[1:])
        new_up, new_down, singular_values = truncated_product_svd(up.flatten(1), down.flatten(1), rank)
        modules[key] = low_rank_module(new_down, new_up, weight_shape)
        report.add(key, singular_values, new_up.shape[1])
    for key, delta in _dense_sums(weighted, [k for k in _all_keys(weighted) if k not in low_rank]).items():
        new_up, new_down, singular_values = truncated_svd(delta.flatten(1), rank)  # LoHa/LoKr: no factors to QR
        modules[key] = low_rank_module(new_down, new_up, tuple(delta.shape))
        report.add(key, singular_values, new_up.shape[1])
    return LoraAdapter({k: modules[k] for k in _all_keys(weighted)}, base_version=_base(weighted, names)), report


def compose_merge(weighted: Weighted, method: str, rank: int, density: float = 0.5, seed: int = 0,
                  names: list[str] | None = None) -> tuple[LoraAdapter, SvdReport]:
    """peft's TIES or DARE merge of the full ΔWᵢ, brought back to a rank-`rank` LoRA by truncated SVD.

    These are not additive: TIES keeps each ΔWᵢ's largest entries and drops those whose sign disagrees with
    the majority; DARE drops entries at random and rescales the rest. DARE draws from its own generator
    seeded by `seed`, leaving the caller's random state alone.
    """
    from peft.utils import merge_utils

    names = _check(weighted, names)
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
            shape = _weight_shape([module for module, _ in present])
            deltas = [module.delta().reshape(shape) for module, _ in present]
            module_weights = torch.tensor([w for _, w in present], dtype=torch.float32)
            if method == "ties":
                merged = merge_utils.ties(deltas, module_weights, density)
            elif method == "dare":
                merged = merge_utils.dare_linear(deltas, module_weights, density)
            else:
                merged = merge_utils.dare_ties(deltas, module_weights, density)
            up, down, singular_values = truncated_svd(merged.flatten(1), rank)
            modules[key] = low_rank_module(down, up, tuple(merged.shape))
            report.add(key, singular_values, up.shape[1])
    return LoraAdapter(modules, base_version=_base(weighted, names)), report


def compose_by_method(weighted: Weighted, method: str, rank: int | None = None, density: float = 0.5, seed: int = 0,
                      names: list[str] | None = None, allow_nonfinite: bool = False,
                      dense: bool = False) -> tuple[LoraAdapter, SvdReport | None]:
    """The composition a user names: `exact` (with `rank`, its SVD; with `dense`, whole differences, which any
    additive module type allows), `merge-svd` (the SVD, by default at the largest input rank), or peft's
    TIES / DARE merges (by default at the sum of the input ranks); the SVD report when there was a truncation."""
    if method == "exact" and rank is None:
        if dense:
            return compose_dense(weighted, names, allow_nonfinite), None
        return compose_exact(weighted, names, allow_nonfinite), None
    if method in ("exact", "merge-svd"):
        return compose_svd(weighted, rank or max(max(a.ranks or [1]) for a, _ in weighted), names, allow_nonfinite)
    if method in PRUNING_MERGES:
        return compose_merge(weighted, method, rank or summed_rank(weighted), density, seed,
                             names)
    raise LoramixError(f"unknown method {method!r}: choose one of {', '.join(FILE_METHODS)}")


def summed_rank(weighted: Weighted) -> int:
    """The sum of the inputs' largest ranks: the default rank of a merge that keeps every input's."""
    return sum(max(a.ranks or [1]) for a, _ in weighted)


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


def _stacked_factors(weighted: Weighted, keys: list[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module: A = [A₁; A₂; …] and B = [w₁s₁B₁ | w₂s₂B₂ | …], over the inputs that have it."""
    stacked = {}
    for key in _all_keys(weighted) if keys is None else keys:
        present = [(a.modules[key], w) for a, w in weighted if key in a.modules]
        down = torch.cat([m.down.float() for m, _ in present], dim=0)  # (R, in[, kh, kw])
        up = torch.cat([m.up.float() * (w * m.scale) for m, w in present], dim=1)  # (out, R[, 1, 1])
        stacked[key] = (down, up)
    return stacked


def _dense_sums(weighted: Weighted, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per module: Σ wᵢ·ΔWᵢ in fp32, in the layer's kernel shape when any input knows it."""
    sums = {}
    for key in _all_keys(weighted) if keys is None else keys:
        present = [(a.modules[key], w) for a, w in weighted if key in a.modules]
        shape = _weight_shape([m for m, _ in present])
        sums[key] = sum(w * m.delta(torch.float32).reshape(shape) for m, w in present)
    return sums


def _weight_shape(modules) -> tuple[int, ...]:
    """The most specific shape the modules give: a conv kernel over the flat (out, in·kh·kw) of a LoHa/LoKr."""
    return max((m.weight_shape for m in modules), key=len)


def _base(weighted: Weighted, names: list[str]) -> str:
    """The one base the inputs were made for (kohya's ss_base_model_version), refusing two: an SD 1.x and an SDXL
    first-text-encoder LoRA have the same shapes, so shapes alone would let them mix."""
    known = {}
    for (adapter, _), name in zip(weighted, names):
        if adapter.base_version and adapter.base_version != "unknown":
            known.setdefault(_family(adapter.base_version), (adapter.base_version, name))
    if len(known) > 1:
        (a, first), (b, second) = list(known.values())[:2]
        raise IncompatibleAdaptersError(f"{first} is for {a}, {second} for {b}: they were made for different "
                                        "base models")
    return next(iter(known.values()))[0] if known else ""


def _family(version: str) -> str:
    return "sdxl" if version.startswith("sdxl") else version


def low_rank_module(down: torch.Tensor, up: torch.Tensor, weight_shape: tuple[int, ...]) -> LoraModule:
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
            if module.kind == NOT_ADDITIVE:
                raise IncompatibleAdaptersError(
                    f"{name}: module {key} is DoRA, which renormalises the weight it changes (W' = m·(W+ΔW)/‖W+ΔW‖), "
                    "so it does not add to other changes and cannot be summed; render it on its own instead")
            if not allow_nonfinite and not all(torch.isfinite(t).all() for t in module.tensors):
                raise LoramixError(f"{name}: module {key} has NaN or infinite values; refusing to compose it "
                                   "(--allow-nonfinite composes it anyway)")
            if module.alpha is not None and not math.isfinite(module.alpha):
                raise LoramixError(f"{name}: module {key} has alpha {module.alpha}")
            seen = shapes.setdefault(key, (module.flat_shape, name))
            if seen[0] != module.flat_shape:
                raise IncompatibleAdaptersError(
                    f"module {key}: {seen[1]} changes a weight of shape {seen[0]}, {name} one of shape "
                    f"{module.flat_shape}; they were made for different base models")
    return names
