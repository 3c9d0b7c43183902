"""The best low-rank approximation of one weight difference, the maths of `loramix extract`.

For a target weight, D = W_tuned − W_base (conv kernels flattened to out × in·kh·kw) and its SVD
D = U·S·Vᵀ give the best rank-k approximation (Eckart–Young): B = U_k·S_k, A = V_kᵀ, α = k (scale 1). k is
fixed or chosen per module by kohya's dynamic rules (loramix.lora.resize). As kohya's
`extract_lora_from_models.py` does, the entries of B and A are then clamped to ±(the `clamp_quantile` quantile
of their values), which trims rare outliers that would dominate fp16 files. Reading the checkpoints is
loramix.jobs.extract's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loramix.lora.adapter import LoraModule, component_of, path_of
from loramix.lora.resize import ModuleResize, ResizeReport, fro_retained, kept_rank

CONV_PARTS = (".resnets.", ".downsamplers.", ".upsamplers.")


@dataclass
class ExtractReport(ResizeReport):
    skipped: list[str] = field(default_factory=list)  # targets the two checkpoints do not differ in


def is_target(key: str, shape: tuple[int, ...], conv: bool) -> bool:
    """Whether a weight gets a LoRA module: attention-block layers, text-encoder layers, and (with conv)
    the resnet and sampler layers."""
    component, path = component_of(key), path_of(key)
    if len(shape) not in (2, 4):
        return False
    if component.startswith("text_encoder"):
        return ".encoder.layers." in f".{path}" and len(shape) == 2
    if ".attentions." in f".{path}":
        return len(shape) == 2 or shape[2:] == (1, 1)
    return conv and any(part in f".{path}" for part in CONV_PARTS)


def low_rank_difference(key, diff, cap, method, param, clamp_quantile) -> tuple[LoraModule, ModuleResize]:
    """The LoRA module closest to `diff` at rank ≤ `cap` (or kohya's dynamic rank), with its kept share."""
    shape = tuple(diff.shape)
    u, s, vh = torch.linalg.svd(diff.flatten(1), full_matrices=False)  # (out, n), (n,), (n, in·kh·kw)
    k = kept_rank(s, len(s), cap, method, param)
    up, down = u[:, :k] * s[:k], vh[:k]
    if clamp_quantile is not None and clamp_quantile < 1:
        limit = quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if len(shape) == 4:
        down, up = down.reshape(k, *shape[1:]), up.reshape(shape[0], k, 1, 1)
    return LoraModule(down.contiguous(), up.contiguous(), float(k)), ModuleResize(key, None, k, fro_retained(s, k))


def quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile, linearly interpolated as `torch.quantile` does, without its 16M-element limit."""
    ordered = values.flatten().sort().values
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
