"""Tiny real models (diffusers UNet, transformers CLIP) and LoRA adapters made for them."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import pytest
import torch

from loramix.lora.adapter import LoraAdapter
from loramix.testing import CLIP_ATTENTION, UNET_ATTENTION, random_adapter, tiny_clip, tiny_unet, weight_shapes


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread for the whole session. The tiny models gain nothing from a second, and where the CPU
    is shared two threads spinning against other processes make a toy step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_attention_shapes() -> dict[str, tuple[int, ...]]:
    """The shipped toy UNet's attention weight shapes, read from its config (no weights loaded)."""
    from loramix.models.load import bundled_base_path
    from loramix.models.shapes import load_base_shapes

    ends = tuple("." + kind for kind in UNET_ATTENTION)
    return {key: shape for key, shape in load_base_shapes(bundled_base_path()).weight_shapes.items()
            if key.startswith("unet.") and key.endswith(ends)}


@pytest.fixture(scope="session")
def toy_loras(toy_attention_shapes, tmp_path_factory):
    """Random UNet-attention LoRA files that fit the shipped toy pipeline.

    `toy_loras(["a", "b"], rank=4, metadata={"b": {...}})` writes `a.safetensors` and `b.safetensors` into a
    fresh folder and returns `{name: path}` in the order given. The i-th name gets seed i, so the same call
    writes the same files; `rank` is one rank for all or one per name, `alpha` defaults to the rank (scale 1).
    """
    from loramix.formats.write import write_adapter

    def make(names: Sequence[str], rank: int | Sequence[int] = 4, alpha: float | None = None,
             metadata: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
        ranks = [rank] * len(names) if isinstance(rank, int) else list(rank)
        assert len(ranks) == len(names) and len(set(names)) == len(names), (names, rank)
        unknown = set(metadata or {}) - set(names)
        assert not unknown, f"metadata for LoRAs not asked for: {sorted(unknown)}"
        folder = tmp_path_factory.mktemp("loras")
        paths = {}
        for seed, (name, r) in enumerate(zip(names, ranks)):
            adapter = random_adapter(toy_attention_shapes, r, float(r if alpha is None else alpha), seed)
            path = folder / f"{name}.safetensors"
            write_adapter(adapter, path, metadata=dict((metadata or {}).get(name, {})))
            paths[name] = str(path)
        return paths

    return make


@pytest.fixture(scope="session")
def unet():
    return tiny_unet()


@pytest.fixture(scope="session")
def clip():
    return tiny_clip()


@pytest.fixture(scope="session")
def unet_attention_shapes(unet):
    return weight_shapes(unet, "unet", UNET_ATTENTION)


@pytest.fixture(scope="session")
def clip_attention_shapes(clip):
    return weight_shapes(clip, "text_encoder", CLIP_ATTENTION)


def fused(model, adapter: LoraAdapter, component: str, weight: float = 1.0):
    """A copy of `model` with W + weight·ΔW for every module of `component` in the adapter."""
    from loramix.models.fuse import fuse_into

    model = copy.deepcopy(model)
    fuse_into(model, adapter.of_component(component), weight)
    return model


def unet_inputs(seed: int = 1, cross_attention_dim: int = 32):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 5, cross_attention_dim, generator=generator)
    return sample, torch.tensor([10, 500]), text


def outputs(unet, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny UNet's and CLIP's outputs on fixed inputs: what two models must agree on to count as equal."""
    sample, timesteps, text = unet_inputs()
    with torch.no_grad():
        return unet(sample, timesteps, text).sample, clip(torch.tensor([[0, 5, 9, 1]])).last_hidden_state


@pytest.fixture(scope="module")
def pipeline():
    """The shipped toy base, fresh for each test module: modules fuse LoRAs and load adapters into it."""
    from loramix.models.load import load_pipeline

    return load_pipeline("toy")


def assert_clean_error(result, *fragments: str) -> None:
    """A CLI result that failed as loramix promises: exit 1, one `Error: ` line holding every fragment, no
    traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
