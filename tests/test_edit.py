"""Sequential editing on the shipped toy base: one img2img stage per LoRA, in order, the base left as it was."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.metadata import META_TRIGGER
from loramix.formats.write import write_adapter
from loramix.lora.specs import WeightedFile
from loramix.render.core import RenderSettings, render
from loramix.render.edit import Stage, edit_sequence
from loramix.testing import random_adapter

PROMPT = "a face"
STEPS = 4


@pytest.fixture(scope="module")
def files(toy_loras, unet_attention_shapes):
    """Random LoRAs that fit the toy UNet (`z` with a trigger word), and one made for another base (the tiny
    UNet of conftest)."""
    paths = toy_loras(["a", "b", "z"], metadata={"z": {META_TRIGGER: "zq"}})
    paths["other"] = str(Path(paths["a"]).parent / "other.safetensors")
    write_adapter(random_adapter(unet_attention_shapes, 4, 4, seed=9), paths["other"])
    return paths


def edit(pipeline, loras: list[WeightedFile], **kwargs) -> list[Stage]:
    return edit_sequence(pipeline, loras, kwargs.pop("prompt", PROMPT), steps=STEPS,
                         guidance=kwargs.pop("guidance", 4.0), **kwargs)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def change(x: Image.Image, y: Image.Image) -> float:
    return float(np.abs(pixels(x) - pixels(y)).mean())


def base_render(pipeline, seed: int = 0) -> Image.Image:
    return render(pipeline, [RenderSettings(PROMPT, seed, STEPS, 4.0, 64, 64)])[0]


def test_stage_0_is_the_base_render_then_each_stage_is_img2img_of_the_one_before(pipeline, files):
    a, b = WeightedFile(files["a"], 1.0), WeightedFile(files["b"], 0.8)
    stages = edit(pipeline, [a, b])
    assert [s.kind for s in stages] == ["text-to-image", "img2img", "img2img"]
    assert [s.lora for s in stages] == [None, a, b]
    assert pixels(stages[0].image).tolist() == pixels(base_render(pipeline)).tolist()
    assert min(change(stages[0].image, stages[1].image), change(stages[1].image, stages[2].image)) > 1
    # Stage 2 depends on nothing but stage 1's image and LoRA b: editing that image with b alone gives it.
    again = edit(pipeline, [b], image=stages[1].image)
    assert again[0].kind == "input" and pixels(again[1].image).tolist() == pixels(stages[2].image).tolist()


def test_same_seed_same_stages_other_seed_other_stages(pipeline, files):
    loras = [WeightedFile(files["a"], 1.0), WeightedFile(files["b"], 1.0)]
    first, second, other = edit(pipeline, loras), edit(pipeline, loras), edit(pipeline, loras, seed=1)
    assert [pixels(s.image).tolist() for s in first] == [pixels(s.image).tolist() for s in second]
    assert change(first[-1].image, other[-1].image) > 1


def test_the_order_of_the_loras_matters(pipeline, files):
    a, b = WeightedFile(files["a"], 1.0), WeightedFile(files["b"], 1.0)
    assert change(edit(pipeline, [a, b])[-1].image, edit(pipeline, [b, a])[-1].image) > 1


def test_each_stage_applies_its_lora_at_its_weight(pipeline, files):
    start = base_render(pipeline, seed=3)
    at_zero = [edit(pipeline, [WeightedFile(files[n], 0.0)], image=start)[1].image for n in "ab"]
    assert pixels(at_zero[0]).tolist() == pixels(at_zero[1]).tolist()  # both are the base's img2img
    assert change(edit(pipeline, [WeightedFile(files["a"], 1.0)], image=start)[1].image, at_zero[0]) > 1


def test_the_base_is_restored_after_an_edit(pipeline, files):
    before = base_render(pipeline)
    weights = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    edit(pipeline, [WeightedFile(files["a"], 1.0), WeightedFile(files["b"], -0.5)])
    assert all(torch.equal(weights[k], v) for k, v in pipeline.unet.state_dict().items())
    assert pixels(base_render(pipeline)).tolist() == pixels(before).tolist()


def test_an_input_of_another_size_is_resized_and_its_mask_with_it(pipeline, files):
    image = base_render(pipeline).resize((100, 80))
    mask = Image.new("L", (100, 80), 255)
    stages = edit(pipeline, [WeightedFile(files["a"], 1.0)], image=image, mask=mask)
    assert [s.image.size for s in stages] == [(64, 64), (64, 64)]


def test_a_mask_confines_the_edit(pipeline, files):
    start = base_render(pipeline, seed=5)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half is edited
    lora = [WeightedFile(files["a"], 1.0)]
    masked, free = edit(pipeline, lora, image=start, mask=mask)[1].image, edit(pipeline, lora, image=start)[1].image
    left, right = (slice(None), slice(0, 32)), (slice(None), slice(32, 64))
    diff_masked, diff_free = np.abs(pixels(masked) - pixels(start)), np.abs(pixels(free) - pixels(start))
    assert diff_free[right].mean() > 2  # without the mask the right half changes...
    assert diff_masked[right].max() == 0  # ...with it, not at all
    assert diff_masked[left].mean() > 2
    # The paste makes the outside exact; under it the latent blend already ends on the input's own latents
    # there, so the model paints the edited half against what stays: without the paste the outside is close to
    # the input's VAE round trip (not equal: the VAE's mid-block attention lets every latent reach every pixel).
    from loramix.models.loras import PipelineLoras
    from loramix.render.edit import _img2img, _img2img_pipeline

    img2img = _img2img_pipeline(pipeline)
    adapters = PipelineLoras(pipeline)
    adapters.apply(lora)
    try:
        settings = RenderSettings(PROMPT, 0, STEPS, 4.0, 64, 64)
        blended = pixels(_img2img(img2img, start, settings, 0.75, mask))
    finally:
        adapters.apply([])
    with torch.no_grad():
        latents = pipeline.vae.encode(img2img.image_processor.preprocess(start)).latent_dist.mode()
        round_trip = pixels(img2img.image_processor.postprocess(pipeline.vae.decode(latents).sample, "pil")[0])
    far_right = (slice(None), slice(40, 64))  # away from the edge, where the decoder's convolutions reach
    assert np.abs(blended - round_trip)[far_right].mean() < diff_free[far_right].mean() / 4


def test_each_lora_with_its_own_mask_edits_only_its_region(pipeline, files, tmp_path):
    """Stage 1 keeps the right half, stage 2 the left half; a LoRA without a mask falls back to --mask."""
    start = base_render(pipeline, seed=5)
    left, right = Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    right.paste(255, (32, 0, 64, 64))
    left.save(tmp_path / "left.png")
    right.save(tmp_path / "right.png")
    loras = [WeightedFile(files["a"], 1.0, mask=str(tmp_path / "left.png")),
             WeightedFile(files["b"], 1.0, mask=str(tmp_path / "right.png")), WeightedFile(files["a"], 1.0)]
    stages = edit(pipeline, loras, image=start, mask=right)
    halves = (slice(None), slice(0, 32)), (slice(None), slice(32, 64))
    first, second, third = (np.abs(pixels(b.image) - pixels(a.image)) for a, b in zip(stages, stages[1:]))
    assert first[halves[1]].max() == 0 and first[halves[0]].mean() > 2
    assert second[halves[0]].max() == 0 and second[halves[1]].mean() > 2
    assert third[halves[0]].max() == 0  # the edit's own --mask


def test_a_lora_mask_that_cannot_be_used_is_named(pipeline, files, tmp_path):
    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    with pytest.raises(LoramixError, match=r"small.png is 32×32 but the base's text-to-image is 64×64"):
        edit(pipeline, [WeightedFile(files["a"], 1.0, mask=str(tmp_path / "small.png"))])
    with pytest.raises(LoramixError, match=r"black.png is all black"):
        edit(pipeline, [WeightedFile(files["a"], 1.0, mask=str(tmp_path / "black.png"))])


def test_a_lora_trigger_word_starts_its_stage_prompt(pipeline, files):
    z, a = WeightedFile(files["z"], 1.0), WeightedFile(files["a"], 1.0)
    assert [s.settings.prompt for s in edit(pipeline, [z, a])] == [PROMPT, f"zq {PROMPT}", PROMPT]
    assert [s.settings.prompt for s in edit(pipeline, [z], triggers=False)] == [PROMPT, PROMPT]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(strength=0.2), "denoises no step"),
    (dict(strength=1.5), "choose a number in (0, 1]"),
    (dict(mask=Image.new("L", (32, 32), 255)), "mask is 32×32 but the base's text-to-image is 64×64"),
    (dict(mask=Image.new("L", (64, 64), 0)), "mask is all black"),
])
def test_bad_requests_are_refused_before_rendering(pipeline, files, kwargs, message):
    with pytest.raises(LoramixError, match=re.escape(message)):
        edit(pipeline, [WeightedFile(files["a"], 1.0)], **kwargs)


def test_a_lora_for_another_base_is_refused_naming_the_module(pipeline, files):
    with pytest.raises(IncompatibleAdaptersError, match=r"other\.safetensors: module unet\.\S+ changes"):
        edit(pipeline, [WeightedFile(files["a"], 1.0), WeightedFile(files["other"], 1.0)])


def run(*args: str):
    return CliRunner().invoke(main, ["edit", *args, "--prompt", PROMPT, "--steps", str(STEPS)])


def test_cli_writes_every_stage_and_the_strip_with_their_settings(pipeline, files, tmp_path):
    face = tmp_path / "face.png"
    base_render(pipeline).resize((80, 80)).save(face)
    out = tmp_path / "out"
    result = run(str(face), f"{files['a']}:0.7", f"{files['z']}:0.5", "--strength", "0.5", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == (f"wrote 3 stages and strip.png to {out} (the input, 80×80, resized to 64×64): "
                             "stage-0-input.png > stage-1-a.png > stage-2-z.png\n")
    assert sorted(p.name for p in out.iterdir()) == ["stage-0-input.png", "stage-1-a.png", "stage-2-z.png",
                                                    "strip.png"]
    assert "parameters" not in Image.open(out / "stage-0-input.png").info  # not rendered by loramix
    second = Image.open(out / "stage-2-z.png").info["parameters"].splitlines()
    assert second[0] == f"zq {PROMPT} <lora:z:0.5>"
    assert second[1].startswith("Steps: 4, Sampler: DPMSolverMultistepScheduler, CFG scale: 4, Seed: 0, ")
    assert second[1].endswith(", Denoising strength: 0.5")
    strip = Image.open(out / "strip.png")
    assert strip.width == 3 * 128 + 2 * 2
    assert strip.info["parameters"].endswith('Stages: "input > a:0.7 > z:0.5"')


def test_cli_without_an_image_starts_from_text_to_image(files, tmp_path):
    out = tmp_path / "out"
    result = run(files["a"], "-o", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["stage-0-text-to-image.png", "stage-1-a.png", "strip.png"]
    assert Image.open(out / "stage-0-text-to-image.png").info["parameters"].splitlines()[0] == PROMPT


@pytest.mark.parametrize(("case", "fragments"), [
    ("unreadable-image", ("image", "x.png", "not a readable image")),
    ("missing-image", ("image", "gone.png", "no such file")),
    ("other-base", ("other.safetensors", "module unet.down_blocks.")),
    ("no-file", ("':0.5'", "no file before ':'")),
    ("mask-size", ("mask", "32×32", "face.png is 64×64")),
    ("image-late", ("face.png", "can only be the first argument")),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(pipeline, files, tmp_path, case, fragments):
    face = tmp_path / "face.png"
    base_render(pipeline).save(face)
    bad = tmp_path / "x.png"
    bad.write_text("not an image\n")
    small = tmp_path / "small.png"
    Image.new("L", (32, 32), 255).save(small)
    a = f"{files['a']}:0.7"
    arguments = {
        "unreadable-image": [str(bad), a],
        "missing-image": [str(tmp_path / "gone.png"), a],
        "other-base": [str(face), a, f"{files['other']}:0.5"],
        "no-file": [str(face), ":0.5"],
        "mask-size": [str(face), a, "--mask", str(small)],
        "image-late": [a, str(face)],
    }[case]
    out = tmp_path / "out"
    result = run(*arguments, "-o", str(out))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
