"""Base models, as far as an adapter needs them: which modules they have and with what weight shapes.

A base is named by a built-in architecture (`sd15`, `sdxl`: the published configs, shipped with loramix),
a diffusers pipeline folder (with `model_index.json`), a single model folder holding `config.json`, or a
config `.json` file. Only configs are read: models are built on the meta device, so no weights are loaded
and even SDXL costs no memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from loramix.choices import COMPONENTS
from loramix.errors import BaseLoadError, LoramixError
from loramix.lora.adapter import canonical_path
from loramix.models.architectures import BUILTIN, architecture_folder, recognise


@dataclass
class BaseShapes:
    """The weight shape of every module with a weight, keyed `<component>.<module path>`, and the
    parameter count of each component."""

    name: str
    weight_shapes: dict[str, tuple[int, ...]]
    num_params: dict[str, int]

    @property
    def total_params(self) -> int:
        return sum(self.num_params.values())


def load_base_shapes(spec: str | os.PathLike) -> BaseShapes:
    configs = _component_configs(str(spec))
    weight_shapes, num_params = {}, {}
    for component, config in configs.items():
        model = _build_on_meta(component, config, spec)
        num_params[component] = sum(p.numel() for p in model.parameters())
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() in (2, 4):
                weight_shapes[f"{component}.{canonical_path(component, name)}"] = tuple(weight.shape)
    return BaseShapes(str(spec), weight_shapes, num_params)


def _component_configs(spec: str) -> dict[str, dict]:
    if spec in BUILTIN:
        return _component_configs_of(architecture_folder(BUILTIN[spec]))
    path = Path(spec)
    if not path.exists():
        raise LoramixError(f"base {spec!r}: no such file or folder, and not a built-in base "
                           f"({', '.join(BUILTIN)})")
    if path.suffix == ".safetensors":  # a single-file checkpoint: its architecture's configs, from the header
        try:
            return _component_configs_of(architecture_folder(recognise(path).folder))
        except BaseLoadError as e:
            raise LoramixError(str(e)) from None
    if path.is_file():
        return {_component_of_config(path, _read_config(path)): _read_config(path)}
    if (path / "model_index.json").is_file():
        configs = {c: _read_config(path / c / "config.json") for c in COMPONENTS
                   if (path / c / "config.json").is_file()}
        if not configs:
            raise LoramixError(f"base {spec}: pipeline folder without unet or text encoder configs")
        return configs
    if (path / "config.json").is_file():
        config = _read_config(path / "config.json")
        return {_component_of_config(path, config): config}
    raise LoramixError(f"base {spec}: a folder with neither model_index.json nor config.json")


def _component_configs_of(folder: Path) -> dict[str, dict]:
    return {component: _read_config(folder / component / "config.json") for component in COMPONENTS
            if (folder / component / "config.json").is_file()}


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoramixError(f"base config {path}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise LoramixError(f"base config {path}: not a JSON object")
    return config


def _component_of_config(path: Path, config: dict) -> str:
    if config.get("_class_name") == "UNet2DConditionModel":
        return "unet"
    if config.get("model_type") in ("clip_text_model", "clip"):
        return "text_encoder"
    raise LoramixError(f"base config {path}: neither a UNet2DConditionModel nor a CLIP text model config")


def _build_on_meta(component: str, config: dict, spec):
    from accelerate import init_empty_weights

    try:
        with init_empty_weights():
            if component == "unet":
                from diffusers import UNet2DConditionModel

                return UNet2DConditionModel.from_config(config)
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            with_projection = "CLIPTextModelWithProjection" in config.get("architectures", [])
            model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
            return model_class(CLIPTextConfig(**config))
    except (TypeError, ValueError, KeyError) as e:
        raise LoramixError(f"base {spec}: the {component} config does not build ({e})") from None
