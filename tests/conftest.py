"""Tiny real models (diffusers UNet, transformers CLIP) and LoRA adapters made for them."""

from __future__ import annotations

import atexit
import gc
from collections.abc import Mapping, Sequence

import pytest

# torch and the models import inside the fixtures: the xdist controller, which runs no test, then starts its
# workers without first spending two seconds on imports only the workers use.


def pytest_configure(config):
    # Each xdist worker ends holding every model its tests built: skip the collector's walk over them at exit
    # (1-3 s a worker), as the `loramix` command does.
    atexit.register(gc.freeze)


def pytest_collection_finish(session):
    # What collection imported (torch, diffusers, transformers, the test modules: half a million objects, none
    # of them garbage) goes out of the cyclic collector's reach. Its full collections walk every object it
    # tracks, and the tests trigger one every few model builds: a fifth of the time a toy pipeline takes to load
    # went to them. Objects the tests create are still collected.
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread for the whole session. The tiny models gain nothing from a second, and where the CPU
    is shared two threads spinning against other processes make a toy step many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mustache_faces(tmp_path_factory):
    """The first 8 faces of samples/mustache/ (image, caption and mask each): what a test's few training steps
    read, without encoding all of the recipe's faces first."""
    import shutil
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "samples" / "mustache"
    folder = tmp_path_factory.mktemp("mustache-faces")
    for path in sorted(samples.iterdir()):
        if int(path.name[:4]) < 8:
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def toy_attention_shapes() -> dict[str, tuple[int, ...]]:
    """The shipped toy UNet's attention weight shapes, read from its config (no weights loaded)."""
    from loramix.models.load import bundled_base_path
    from loramix.models.shapes import load_base_shapes
    from loramix.testing import UNET_ATTENTION

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
    from loramix.testing import random_adapter

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
    from loramix.testing import tiny_unet

    return tiny_unet()


@pytest.fixture(scope="session")
def clip():
    from loramix.testing import tiny_clip

    return tiny_clip()


@pytest.fixture(scope="session")
def unet_attention_shapes(unet):
    from loramix.testing import UNET_ATTENTION, weight_shapes

    return weight_shapes(unet, "unet", UNET_ATTENTION)


@pytest.fixture(scope="session")
def clip_attention_shapes(clip):
    from loramix.testing import CLIP_ATTENTION, weight_shapes

    return weight_shapes(clip, "text_encoder", CLIP_ATTENTION)


@pytest.fixture(scope="module")
def pipeline():
    """The shipped toy base, fresh for each test module: modules fuse LoRAs and load adapters into it."""
    from loramix.models.load import load_pipeline

    return load_pipeline("toy")
