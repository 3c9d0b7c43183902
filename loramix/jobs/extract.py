"""`loramix extract`: the LoRA that best approximates the difference of two checkpoints (a fine-tune and its
base), module by module (the maths: loramix.lora.extract).

Memory stays bounded: the checkpoints are opened lazily (safetensors `safe_open`) and one module's two weights
are in memory at a time. Targets, in diffusers' module names: the UNet's attention blocks (linear and 1×1
layers), the text encoders' transformer layers, and with `conv_rank` the resnet and sampler layers.
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open

from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.checkpoint import CheckpointFile, checkpoint_files
from loramix.lora.adapter import LoraAdapter
from loramix.lora.extract import ExtractReport, is_target, low_rank_difference
from loramix.lora.resize import check_dynamic


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
                modules[key], entry = low_rank_difference(key, diff, cap, method, param, clamp_quantile)
                report.modules.append(entry)
    if not modules:
        raise LoramixError(f"{tuned} and {base} do not differ in any layer a LoRA targets: nothing to extract")
    return LoraAdapter(modules), report


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
