"""The README's plain-diffusers snippet, run exactly as it is written there, on a LoRA loramix trained."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loramix.train.loop import train
from loramix.train.recipe import make_recipe

pytestmark = pytest.mark.slow  # trains a LoRA, then renders with and without it

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- this snippet runs as it is in tests/test_readme.py -->"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1
    found = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, "the marker is not followed by a python block"
    return found.group(1)


def test_the_readme_snippet_loads_the_toy_base_and_a_trained_lora_in_plain_diffusers(tmp_path, monkeypatch):
    # The snippet reads runs/mustache/mustache.safetensors: train one there, UNet and text encoder both.
    train(make_recipe(None, dict(dataset=str(ROOT / "samples" / "mustache"), trigger="mustache",
                                 caption_template="{caption}", steps=3, batch_size=2, learning_rate=5e-2, rank=4,
                                 train_text_encoder=True, output=str(tmp_path / "runs" / "mustache"),
                                 name="mustache")))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)

    pipeline = namespace["pipeline"]
    assert set(pipeline.get_list_adapters()) == {"unet", "text_encoder"}  # both parts of the LoRA were loaded
    with_lora = np.asarray(Image.open(tmp_path / "mustache.png"))
    assert with_lora.shape == (64, 64, 3)

    # The same snippet without its LoRA line renders something else: the LoRA acted.
    without, removed = re.subn(r"^pipeline\.load_lora_weights\(.*\n", "", readme_snippet(), flags=re.MULTILINE)
    assert removed == 1
    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path / "base")
    exec(compile(without, "README.md", "exec"), {})
    base = np.asarray(Image.open(tmp_path / "base" / "mustache.png"))
    assert np.abs(with_lora.astype(int) - base.astype(int)).max() > 0
