"""Lower a LoRA's rank, fixed or chosen per module from its singular values, as kohya's `resize_lora.py` does.

For each module ΔW = s·B·A (s = α/r), the SVD of B·A is taken by the QR trick of `compose --rank` (B = Q_b·R_b,
Aᵀ = Q_a·R_a, so only the r × r middle R_b·R_aᵀ needs an SVD), never by forming the out × in product as kohya
does. Then k singular values are kept:

    fixed          k = the rank asked for
    sv_ratio t     k = #{σᵢ > σ₁ / t}                          (then + 1, as kohya does)
    sv_cumulative  k = first i with Σ_{j≤i} σⱼ / Σ σ ≥ t       (then + 1)
    sv_fro t       k = first i with Σ_{j≤i} σⱼ² / Σ σ² ≥ t²    (then + 1)

each clamped as kohya clamps it (1 ≤ index ≤ n − 1, n = min(out, in); k ≤ the rank cap; a zero ΔW keeps 1),
and never above r, where the σ beyond r are zero. The new module is B' = U_k·S_k, A' = V_kᵀ with α' = s·k, so
its scale α'/k is the old one: the effect is unchanged up to the dropped σ. The Frobenius share retained is
√(Σ_{i≤k} σᵢ²) / √(Σ σᵢ²). This module imports only torch and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loramix.choices import DYNAMIC_METHODS
from loramix.errors import LoramixError
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.compose import low_rank_module, truncated_product_svd, truncated_svd

MIN_SINGULAR_VALUE = 1e-6  # kohya's MIN_SV: below it the ΔW counts as zero and keeps rank 1


@dataclass
class ModuleResize:
    key: str
    old_rank: int | None
    new_rank: int
    fro_retained: float  # √(Σ kept σ²) / √(Σ σ²)


@dataclass
class ResizeReport:
    modules: list[ModuleResize] = field(default_factory=list)

    @property
    def mean_fro_retained(self) -> float:
        return sum(m.fro_retained for m in self.modules) / len(self.modules) if self.modules else 1.0


def kept_rank(singular_values: torch.Tensor, full_length: int, cap: int, method: str | None = None,
              param: float | None = None) -> int:
    """How many singular values to keep, by kohya's rules (see the module docstring). `singular_values` may be
    the first r of `full_length` values (the rest zero), as the QR trick gives them."""
    s = torch.cat([singular_values.double(), singular_values.new_zeros(full_length - len(singular_values)).double()])
    n = len(s)
    if method is None:
        k = cap
    elif method == "sv_ratio":
        k = _clamp(int((s > s[0] / param).sum()), n) + 1
    elif method == "sv_cumulative":
        k = _clamp(int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), param)) + 1, n) + 1
    elif method == "sv_fro":
        energy = s ** 2
        k = _clamp(int(torch.searchsorted(torch.cumsum(energy, 0) / energy.sum(), param ** 2)) + 1, n) + 1
    else:
        raise LoramixError(f"unknown dynamic method {method!r}: choose one of {', '.join(DYNAMIC_METHODS)}")
    if s[0] <= MIN_SINGULAR_VALUE:
        return 1
    return max(1, min(k, cap, len(singular_values)))


def _clamp(index: int, n: int) -> int:
    return max(1, min(index, n - 1))


def fro_retained(singular_values: torch.Tensor, k: int) -> float:
    energy = singular_values.double() ** 2
    total = float(energy.sum())
    return math.sqrt(float(energy[:k].sum()) / total) if total > 0 else 1.0


def check_dynamic(method: str | None, param: float | None) -> None:
    if method is None:
        return
    if method not in DYNAMIC_METHODS:
        raise LoramixError(f"unknown dynamic method {method!r}: choose one of {', '.join(DYNAMIC_METHODS)}")
    if param is None or not math.isfinite(param) or param <= 0 or (method != "sv_ratio" and param > 1):
        what = "a ratio > 0, e.g. 4" if method == "sv_ratio" else "a share in (0, 1], e.g. 0.9"
        raise LoramixError(f"--dynamic {method} needs --dynamic-param: {what}")


def resize_adapter(adapter: LoraAdapter, rank: int | None, method: str | None = None,
                   param: float | None = None) -> tuple[LoraAdapter, ResizeReport]:
    """Each module at its kept rank (`rank` fixed, or the cap of a dynamic `method`), with the same scale."""
    check_dynamic(method, param)
    if rank is None and method is None:
        raise LoramixError("give --rank R, or --dynamic with --dynamic-param")
    modules, report = {}, ResizeReport()
    for key, module in adapter.modules.items():
        if module.kind == "DoRA":
            raise LoramixError(f"module {key} is DoRA, whose magnitude belongs to its full rank: it cannot be "
                               "resized without changing what it does")
        full_length = min(module.flat_shape)
        if module.kind == "LoRA":
            up, down, s = truncated_product_svd(module.up.flatten(1), module.down.flatten(1), full_length)
            scale, old_rank = module.scale, module.rank
        else:  # LoHa, LoKr, full: no two factors to QR, so the SVD of ΔW itself, at scale 1
            up, down, s = truncated_svd(module.delta().flatten(1), full_length)
            scale, old_rank = 1.0, module.rank
        cap = rank if rank is not None else (old_rank or full_length)
        k = kept_rank(s, full_length, cap, method, param)
        new = low_rank_module(down[:k], up[:, :k], module.weight_shape)
        modules[key] = LoraModule(new.down, new.up, scale * k)
        report.modules.append(ModuleResize(key, old_rank, k, fro_retained(s, k)))
    return LoraAdapter(modules, dict(adapter.metadata), adapter.source_format, adapter.base_version), report
