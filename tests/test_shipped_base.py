"""The shipped toy base and judge: plain diffusers loads the base, its faces are faces, the judge reads them."""

from __future__ import annotations

import json

import pytest

from loramix.models.load import bundled_base_path
from loramix.toy.base import LATENT_CHANNELS


def test_plain_diffusers_loads_the_shipped_base_and_it_is_small():
    from diffusers import StableDiffusionPipeline

    folder = bundled_base_path()
    loaded = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert loaded.unet.config.in_channels == LATENT_CHANNELS == loaded.vae.config.latent_channels
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    report = json.loads((folder / "build_report.json").read_text())
    assert report["seconds_total"] <= 90 * 60


@pytest.mark.slow
def test_shipped_base_renders_faces_without_the_attributes(pipeline):
    from loramix.render.core import RenderSettings, render
    from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from loramix.toy.judge import load_judge

    settings = [RenderSettings("a face", seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, 64, 64) for seed in range(8)]
    images = render(pipeline, settings)
    verdicts = load_judge().verdicts(images)
    assert verdicts[:, 0].sum() >= 7  # faces
    assert verdicts[:, 1:].sum() <= 1  # hardly ever a mustache, lipstick or glasses


@pytest.mark.slow
def test_shipped_judge_reads_faces_through_the_shipped_vae(pipeline):
    from loramix.toy.build import vae_roundtrip
    from loramix.toy.judge import evaluate_judge, load_judge

    accuracy = evaluate_judge(load_judge(), count=200, seed=5, roundtrip=vae_roundtrip(pipeline.vae))
    assert min(accuracy.values()) >= 0.97, accuracy  # 99.7% or more each on 1,000 images
