"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

    <run>/checkpoints/step-000300/
        trainable.safetensors   the LoRA parameters, by their names in the model
        optimizer.safetensors   the optimizer's per-parameter state (Adam's moments, its step)
        state.json              step, optimizer hyper-parameters, learning-rate schedule, recipe

A checkpoint is written into a temporary folder and renamed into place, so a run killed while writing
leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from loramix.errors import CheckpointError

PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict  # as `optimizer.state_dict()` gives it
    schedule: dict  # as `lr_scheduler.state_dict()` gives it
    extra: dict  # the recipe and anything else the run wants back


def save_checkpoint(folder: Path, checkpoint: Checkpoint, keep: int) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{checkpoint.step:06d}"
    staging = folder / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in checkpoint.trainable.items()},
              str(staging / "trainable.safetensors"))
    tensors, groups = _flatten_optimizer(checkpoint.optimizer)
    save_file(tensors, str(staging / "optimizer.safetensors"))
    state = {"step": checkpoint.step, "param_groups": groups, "schedule": checkpoint.schedule, **checkpoint.extra}
    (staging / "state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(path: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
        trainable = load_file(str(path / "trainable.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: not a complete checkpoint ({e})") from None
    optimizer = {"state": _unflatten_state(tensors), "param_groups": state.pop("param_groups")}
    step, schedule = state.pop("step"), state.pop("schedule")
    return Checkpoint(step, trainable, optimizer, schedule, state)


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{index}/{name}"] = tensor.detach().contiguous().cpu()
    return tensors, state_dict["param_groups"]


def _unflatten_state(tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = tensor
    return state
