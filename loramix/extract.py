"""The LoRA that best approximates the difference of two checkpoints (a fine-tune and its base), module by module.

For each target weight, D = W_tuned − W_base (conv kernels flattened to out × in·kh·kw) and its SVD
D = U·S·Vᵀ give the best rank-k approximation (Eckart–Young): B = U_k·S_k, A = V_kᵀ, α = k (scale 1). k is
fixed (`rank`, `conv_rank` for 3×3 convs) or chosen per module by kohya's dynamic rules (loramix.resize).
As kohya's `extract_lora_from_models.py` does, the entries of B and A are then clamped to ±(the
`clamp_quantile` quantile of their values), which trims rare outliers that would dominate fp16 files.

Memory stays bounded: the checkpoints are opened lazily (safetensors `safe_open`) and one module's two weights
are in memory at a time. Targets, in diffusers' module names: the UNet's attention blocks (linear and 1×1
layers), the text encoders' transformer layers, and with `conv_rank` the resnet and sampler layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.checkpoint import CheckpointFile, checkpoint_files
from loramix.lora import LoraAdapter, LoraModule, component_of, path_of
from loramix.resize import ModuleResize, ResizeReport, check_dynamic, fro_retained, kept_rank

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


def extract_lora(tuned: str | os.PathLike, base: str | os.PathLike, rank: int, conv_rank: int | None = None,
                 method: str | None = None, param: float | None = None,
                 clamp_quantile: float | None = 0.99) -> tuple[LoraAdapter, ExtractReport]:
    """The LoRA of `tuned` − `base`, with each module's kept rank and Frobenius share."""
    check_dynamic(method, param)
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise LoramixError(f"--clamp-quantile must be in (0, 1], got {clamp_quantile}")
    tuned_files, base_files = checkpoint_files(tuned), checkpoint_files(base)
    _check_same_layout(tuned, base, tuned_files, base_files)
    modules, report = {}, ExtractReport()
    for tuned_file, base_file in zip(tuned_files, base_files):
        with safe_open(str(tuned_file.path), framework="pt") as t, safe_open(str(base_file.path), framework="pt") as b:
            _check_same_tensors(tuned_file, base_file, t, b)
            for tensor_key in t.keys():
                key = tuned_file.module_of(tensor_key)
                shape = tuple(t.get_slice(tensor_key).get_shape())
                if key is None or not is_target(key, shape, conv_rank is not None):
                    continue
                diff = t.get_tensor(tensor_key).float() - b.get_tensor(tensor_key).float()
                if not torch.any(diff):
                    report.skipped.append(key)
                    continue
                cap = conv_rank if len(shape) == 4 and shape[2:] != (1, 1) else rank
                modules[key], entry = _low_rank(key, diff, cap, method, param, clamp_quantile)
                report.modules.append(entry)
    if not modules:
        raise LoramixError(f"{tuned} and {base} do not differ in any layer a LoRA targets: nothing to extract")
    return LoraAdapter(modules), report


def _low_rank(key, diff, cap, method, param, clamp_quantile) -> tuple[LoraModule, ModuleResize]:
    shape = tuple(diff.shape)
    u, s, vh = torch.linalg.svd(diff.flatten(1), full_matrices=False)  # (out, n), (n,), (n, in·kh·kw)
    k = kept_rank(s, len(s), cap, method, param)
    up, down = u[:, :k] * s[:k], vh[:k]
    if clamp_quantile is not None and clamp_quantile < 1:
        limit = _quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if len(shape) == 4:
        down, up = down.reshape(k, *shape[1:]), up.reshape(shape[0], k, 1, 1)
    return LoraModule(down.contiguous(), up.contiguous(), float(k)), ModuleResize(key, None, k, fro_retained(s, k))


def _quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile, linearly interpolated as `torch.quantile` does, without its 16M-element limit."""
    ordered = values.flatten().sort().values
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _check_same_layout(tuned, base, tuned_files: list[CheckpointFile], base_files: list[CheckpointFile]) -> None:
    if [f.component for f in tuned_files] != [f.component for f in base_files]:
        raise IncompatibleAdaptersError(f"{tuned} and {base} are laid out differently (a single file and a folder, "
                                        "or other components): extract needs two checkpoints of one layout")


def _check_same_tensors(tuned: CheckpointFile, base: CheckpointFile, t, b) -> None:
    """The same architecture: the same weight names with the same shapes, before any work is done."""
    tuned_keys, base_keys = set(t.keys()), set(b.keys())
    if tuned_keys != base_keys:
        only = sorted(tuned_keys ^ base_keys)
        raise IncompatibleAdaptersError(f"{tuned.path} and {base.path} are different architectures: "
                                        f"{len(only)} weights are in one only (e.g. {only[0]})")
    for key in sorted(tuned_keys):
        if t.get_slice(key).get_shape() != b.get_slice(key).get_shape():
            raise IncompatibleAdaptersError(f"{tuned.path} and {base.path} are different architectures: {key} "
                                            f"is {tuple(t.get_slice(key).get_shape())} in one, "
                                            f"{tuple(b.get_slice(key).get_shape())} in the other")
