"""Stable Diffusion 1.5 and SDXL at their real shapes, with random weights, for benchmarks: built once from the
published configs shipped in loramix/architectures and cached outside the repository.

    <cache>/sd15/          a diffusers folder, fp16 weights, as `save_pretrained` writes one
    <cache>/sd15.safetensors   the same weights as one checkpoint in the original layout
    <cache>/sdxl/, <cache>/sdxl.safetensors

The cache is $LORAMIX_BENCH_CACHE, else ~/.cache/loramix/bench. Each tensor is drawn on its own, in fp16,
so building SDXL holds one component's weights at a time, never an fp32 model.

    python bench/real_bases.py sd15     builds what is missing and prints the folder and the file, a line each

A benchmark that measures memory builds through that command, in a process of its own, so that it never holds
a model itself (see measure.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch

from loramix.models.architectures import architecture_folder

ARCHITECTURES = {"sd15": "sd1", "sdxl": "sdxl"}
WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}


def cache_folder() -> Path:
    return Path(os.environ.get("LORAMIX_BENCH_CACHE", Path.home() / ".cache" / "loramix" / "bench"))


def real_base(name: str) -> tuple[Path, Path]:
    """(the diffusers folder, the single file) of `name` ("sd15", "sdxl"), built if not cached yet."""
    folder, single = cache_folder() / name, cache_folder() / f"{name}.safetensors"
    if not (folder / "model_index.json").is_file():
        _build_folder(ARCHITECTURES[name], folder)
    if not single.is_file():
        from loramix.formats.original_layout import save_single_file
        from loramix.models.load import load_pipeline

        save_single_file(load_pipeline(folder, dtype="fp16"), single)
    return folder, single


def _build_folder(architecture: str, folder: Path) -> None:
    from safetensors.torch import save_file

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(architecture_folder(architecture), partial)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if tokenizer in json.loads((partial / "model_index.json").read_text()):
            shutil.copytree(architecture_folder("clip-tokenizer"), partial / tokenizer)
            if tokenizer == "tokenizer_2":
                config = json.loads((partial / tokenizer / "tokenizer_config.json").read_text())
                (partial / tokenizer / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "!"}))
    generator = torch.Generator().manual_seed(0)
    for component, file_name in WEIGHT_FILES.items():
        if (partial / component / "config.json").is_file():
            tensors = {name: _random(name, shape, generator) for name, shape in _shapes(partial, component).items()}
            save_file(tensors, str(partial / component / file_name), metadata={"format": "pt"})
            del tensors
    partial.rename(folder)


def _shapes(folder: Path, component: str) -> dict[str, tuple[int, ...]]:
    """Every tensor the component saves, by name and shape, from a model built on the meta device."""
    from accelerate import init_empty_weights

    config = json.loads((folder / component / "config.json").read_text())
    with init_empty_weights():
        if component in ("unet", "vae"):
            import diffusers

            model = getattr(diffusers, config["_class_name"]).from_config(config)
        else:
            import transformers

            model_class = getattr(transformers, config["architectures"][0])
            model = model_class(transformers.CLIPTextConfig(**config))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _random(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Norm scales 1, biases 0, weights ~ N(0, 1/fan_in) so activations keep their size through the layers."""
    if len(shape) == 1:
        value = 1.0 if "norm" in name and name.endswith("weight") else 0.0
        return torch.full(shape, value, dtype=torch.float16)
    fan_in = math.prod(shape[1:]) if "embedding" not in name else 1
    return (torch.randn(shape, generator=generator) * min(0.02 if fan_in == 1 else 1.0, fan_in ** -0.5)).half()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(ARCHITECTURES))
    for path in real_base(parser.parse_args().name):
        print(path)


if __name__ == "__main__":
    main()
