"""Regional composition: each LoRA's noise prediction weighted by its mask, the base's filling the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.lora.specs import WeightedFile, parse_weight_spec
from loramix.render.core import RenderSettings
from loramix.testing import assert_clean_error

STEPS = 4


@pytest.fixture(scope="module")
def lora_files(toy_loras):
    return list(toy_loras(["first", "second"]).values())


@pytest.fixture(scope="module")
def triggered(toy_loras) -> str:
    """A LoRA whose metadata names its trigger word, as `loramix train` writes it."""
    return toy_loras(["mustache"], metadata={"mustache": {"loramix_trigger_words": "mustache"}})["mustache"]


@pytest.fixture(scope="module")
def loras(pipeline):
    """One PipelineLoras for the module's pipeline: it names the adapters it loads into it."""
    from loramix.models.loras import PipelineLoras

    return PipelineLoras(pipeline)


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> dict[str, str]:
    """Masks of other sizes and modes than the 64 × 64 image: resizing and greyscale conversion are part of
    the test. The halves split at a latent pixel's edge, so on the 8 × 8 latent grid they are exactly 0 or 1."""
    folder = tmp_path_factory.mktemp("masks")
    left = Image.new("L", (128, 128), 0)
    left.paste(255, (0, 0, 64, 128))
    right = Image.new("RGB", (32, 32), (255, 255, 255))
    right.paste((0, 0, 0), (0, 0, 16, 32))
    images = {"white": Image.new("RGB", (100, 37), (255, 255, 255)), "black": Image.new("L", (20, 20), 0),
              "left": left, "right": right}
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.png")
        image.save(paths[name])
    return paths


def settings(count: int = 2, steps: int = STEPS):
    return [RenderSettings("a smiling face", seed, steps, 4.0, 64, 64) for seed in range(count)]


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_masks_reach_the_latent_grid_by_area_averaging(masks):
    from loramix.render.regions import load_mask

    left = load_mask(masks["left"], 64, 64, 8)
    assert left.shape == (8, 8) and (left[:, :4] == 1).all() and (left[:, 4:] == 0).all()
    assert (load_mask(masks["right"], 64, 64, 8) == 1 - left).all()  # RGB reads as its luminance
    assert (load_mask(masks["white"], 48, 32, 8) == 1).all() and load_mask(masks["white"], 48, 32, 8).shape == (4, 6)


def test_one_lora_over_everything_is_its_own_render_and_over_nothing_the_base(pipeline, loras, lora_files, masks):
    """A white mask gives ε = 1·ε_k and a black one ε = ε_base + 0: both exact in floating point, so regional
    renders exactly what composite renders with that LoRA alone, and exactly what the base renders."""
    from loramix.render.core import render
    from loramix.render.multi import render_multi

    base = pixels(render(pipeline, settings()))
    alone = pixels(render_multi(pipeline, loras, [WeightedFile(lora_files[0], 0.8)], settings(), "composite"))
    assert np.abs(alone - base).mean() > 1  # the LoRA changes the images
    white = [WeightedFile(lora_files[0], 0.8, mask=masks["white"])]
    assert (pixels(render_multi(pipeline, loras, white, settings(), "regional")) == alone).all()
    black = [WeightedFile(lora_files[0], 0.8, mask=masks["black"])]
    assert (pixels(render_multi(pipeline, loras, black, settings(), "regional")) == base).all()


def test_where_regions_overlap_the_loras_changes_add(pipeline, loras, lora_files, masks):
    """Two LoRAs over everything: ε = ε_base + (ε₁ − ε_base) + (ε₂ − ε_base). One step of the scheduler is
    linear in ε, so the latents after it are the two LoRAs' own one-step latents less the base's."""
    from loramix.render.multi import denoise_multi

    one_step = settings(steps=1)
    first, second = (WeightedFile(path, 0.8) for path in lora_files)
    both_white = [WeightedFile(f.path, f.weight, mask=masks["white"]) for f in (first, second)]
    added = denoise_multi(pipeline, loras, both_white, one_step, "regional")
    alone = [denoise_multi(pipeline, loras, [f], one_step, "composite") for f in (first, second)]
    base = denoise_multi(pipeline, loras, [WeightedFile(first.path, 0.8, mask=masks["black"])], one_step, "regional")
    assert torch.allclose(added, alone[0] + alone[1] - base, atol=1e-5)
    assert not torch.allclose(added, (alone[0] + alone[1]) / 2, atol=1e-3)  # not shared out half and half


def test_disjoint_halves_each_take_their_loras_prediction(pipeline, loras, lora_files, masks):
    """With halves that partition the latent grid, every latent pixel is stepped with exactly one LoRA's
    prediction: after one step (an elementwise update of the latents) each half is that LoRA's exactly; after
    more, each half is nearer its LoRA's latents than the other's; and one LoRA given both halves is that LoRA
    alone over the whole image, at every step."""
    from loramix.render.multi import denoise_multi

    first, second = (WeightedFile(path, 0.8) for path in lora_files)
    halves = [WeightedFile(first.path, 0.8, mask=masks["left"]), WeightedFile(second.path, 0.8, mask=masks["right"])]
    one_step = settings(steps=1)
    split = denoise_multi(pipeline, loras, halves, one_step, "regional")  # (B, C, 8, 8)
    alone = [denoise_multi(pipeline, loras, [f], one_step, "composite") for f in (first, second)]
    assert torch.equal(split[..., :4], alone[0][..., :4]) and torch.equal(split[..., 4:], alone[1][..., 4:])
    assert not torch.equal(alone[0], alone[1])

    # Over several steps each LoRA's prediction sees the other half's latents too (the UNet's receptive field
    # spans the 8 × 8 grid), so the halves are no longer exact; on average each is still nearer its own LoRA's.
    split = denoise_multi(pipeline, loras, halves, settings(8), "regional")
    alone = [denoise_multi(pipeline, loras, [f], settings(8), "composite") for f in (first, second)]
    left, right = np.s_[..., :4], np.s_[..., 4:]
    assert (split[left] - alone[0][left]).abs().mean() < (split[left] - alone[1][left]).abs().mean()
    assert (split[right] - alone[1][right]).abs().mean() < (split[right] - alone[0][right]).abs().mean()

    same_lora = [WeightedFile(first.path, 0.8, mask=masks["left"]), WeightedFile(first.path, 0.8, mask=masks["right"])]
    assert torch.equal(denoise_multi(pipeline, loras, same_lora, settings(), "regional"),
                       denoise_multi(pipeline, loras, [first], settings(), "composite"))


def test_a_lora_without_a_mask_takes_the_region_its_trigger_word_attends_to(pipeline, loras, triggered, tmp_path):
    """The region is read from the trigger's cross-attention in the first steps: recording it leaves every
    layer's output as it was, it is a real part of the image, and the render is the one that region given as a
    mask file renders."""
    from loramix.render.core import render
    from loramix.render.multi import find_regions, render_multi
    from loramix.render.regions import TriggerAttention, recording_cross_attention

    one = [RenderSettings("a face with a mustache", 3, STEPS, 4.0, 64, 64)]
    plain = pixels(render(pipeline, one))
    recorder = TriggerAttention({}, guided=True, grid=(8, 8))
    with recording_cross_attention(pipeline.unet, recorder):
        assert (pixels(render(pipeline, one)) == plain).all()
    assert (pixels(render(pipeline, one)) == plain).all()  # the original processors are back

    lora = WeightedFile(triggered, 0.8)
    names = loras.load_named([lora.path])
    pipeline.enable_lora()
    try:
        region = find_regions(pipeline, loras, [lora], names, one)[0][0]  # (8, 8) of 0 and 1
    finally:
        pipeline.disable_lora()
    assert set(region.unique().tolist()) == {0.0, 1.0}
    mask = tmp_path / "found.png"
    Image.fromarray((region.numpy() * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST).save(mask)
    found = pixels(render_multi(pipeline, loras, [lora], one, "regional"))
    given = pixels(render_multi(pipeline, loras, [WeightedFile(lora.path, 0.8, mask=str(mask))], one, "regional"))
    assert (found == given).all()
    everywhere = pixels(render_multi(pipeline, loras, [lora], one, "composite"))
    assert np.abs(found - plain).mean() > 0.5 and np.abs(found - everywhere).mean() > 0.5


def test_trigger_words_come_from_loramix_then_kohya_metadata():
    from loramix.render.regions import trigger_words

    tags = '{"5_faces": {"mustache": 30, "face": 36}, "2_more": {"mustache": 10}}'
    assert trigger_words({"loramix_trigger_words": "tache, curly"}) == ["tache", "curly"]
    assert trigger_words({"ss_tag_frequency": tags}) == ["mustache", "face"]
    assert trigger_words({"loramix_trigger_words": "face", "ss_tag_frequency": tags}) == ["face", "mustache"]
    assert trigger_words({"ss_tag_frequency": "not json"}) == []


def test_the_weight_spec_carries_the_mask_and_writes_it_back():
    for spec in ["a.safetensors:0.8#mask.png", "a.safetensors:0.8:lbw=INS#masks/left half.png",
                 "a.safetensors:1#m.png"]:
        weighted = parse_weight_spec(spec)
        assert weighted.spec == spec and parse_weight_spec(weighted.spec) == weighted
    assert parse_weight_spec("a.safetensors#m.png") == WeightedFile("a.safetensors", 1.0, mask="m.png")
    assert parse_weight_spec("a.safetensors:0.8:lbw=INS#m.png") == WeightedFile("a.safetensors", 0.8, "INS",
                                                                                mask="m.png")
    assert parse_weight_spec("a.safetensors:0.5").mask is None


def test_compose_renders_regions_and_names_them(lora_files, masks, tmp_path):
    out = tmp_path / "images"
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.8#{masks['left']}",
                                       f"{lora_files[1]}:0.8#{masks['right']}", "--method", "regional",
                                       "--prompt", "a face", "-n", "1", "--steps", "2", "--images", str(out)])
    assert result.exit_code == 0, result.output
    assert "regional: guided predictions blended by each LoRA's mask" in result.output
    parameters = Image.open(out / "00000-0.png").text["parameters"]
    assert f"<lora:first:0.8#{masks['left']}>" in parameters and parameters.endswith("Composition: regional")


def test_a_lora_with_its_own_prompt_is_conditioned_on_it_and_the_base_keeps_the_images(pipeline, loras, lora_files,
                                                                                      masks):
    """Composite with one LoRA given its own prompt renders what the image's prompt set to that one renders; in
    regional, the base's call keeps the image's prompt, so over a half mask the own prompt changes only what
    the LoRA's call predicts."""
    from loramix.render.multi import denoise_multi

    own = "a sad face on a blue background"
    mine = [WeightedFile(lora_files[0], 0.8, prompt=own)]
    as_prompt = [RenderSettings(own, seed, STEPS, 4.0, 64, 64) for seed in range(2)]
    assert torch.equal(denoise_multi(pipeline, loras, mine, settings(), "composite"),
                       denoise_multi(pipeline, loras, [WeightedFile(lora_files[0], 0.8)], as_prompt, "composite"))
    one_step = settings(steps=1)
    half = WeightedFile(lora_files[0], 0.8, mask=masks["left"])
    plain = denoise_multi(pipeline, loras, [half], one_step, "regional")
    prompted = denoise_multi(pipeline, loras, [WeightedFile(half.path, 0.8, mask=half.mask, prompt=own)], one_step,
                             "regional")
    assert torch.equal(prompted[..., 4:], plain[..., 4:])  # the base's half: the image's prompt either way
    assert not torch.allclose(prompted[..., :4], plain[..., :4])


def test_compose_takes_one_prompt_per_lora_and_writes_them(lora_files, masks, tmp_path):
    out = tmp_path / "images"
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.8#{masks['left']}",
                                       f"{lora_files[1]}:0.8#{masks['right']}", "--method", "regional",
                                       "--lora-prompt", "first=a face with a mustache", "--prompt", "a face", "-n",
                                       "1", "--steps", "2", "--images", str(out)])
    assert result.exit_code == 0, result.output
    parameters = Image.open(out / "00000-0.png").text["parameters"]
    assert parameters.endswith('Composition: regional, LoRA prompts: "first: a face with a mustache"')
    twice = ["--lora-prompt", "first=a", "--lora-prompt", "first=b"]
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.8", "--method", "composite", *twice,
                                       "--prompt", "a face", "--images", str(tmp_path / "x")])
    assert_clean_error(result, "--lora-prompt first: given 2 times; --method composite conditions each LoRA on one")
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.8", "--method", "switch", "--lora-prompt",
                                       "third=a", "--prompt", "a face", "--images", str(tmp_path / "x")])
    assert_clean_error(result, "--lora-prompt third: no LoRA being composed is named third")
    assert not (tmp_path / "x").exists()


REGIONAL = ["--method", "regional", "--prompt", "a face", "-n", "1", "--steps", "1"]


@pytest.mark.parametrize("spec, options, fragments", [
    ("{lora}:0.8#", REGIONAL, ["nothing after '#'"]),
    ("{lora}:0.8#{folder}/missing.png", REGIONAL, ["mask", "missing.png: no such file"]),
    ("{lora}:0.8#{folder}/not-an-image.png", REGIONAL, ["mask", "not-an-image.png: not a readable image"]),
    ("{lora}:0.8#{folder}/left.png", ["--method", "composite", "--prompt", "a face"],
     ["only --method regional and sequential use masks"]),
    ("{lora}:0.8#{folder}/left.png", ["-o", "{folder}/x.safetensors"],
     ["only --method regional and sequential use masks"]),
    ("{lora}:0.8", REGIONAL, ["first has no mask and no trigger words in its metadata", "#mask.png"]),
    ("{triggered}:0.8", REGIONAL, ["none of its trigger words (mustache) is in the prompt 'a face'"]),
])
def test_bad_regions_are_one_line_errors(lora_files, triggered, masks, tmp_path, spec, options, fragments):
    (tmp_path / "not-an-image.png").write_text("not a picture")
    Image.open(masks["left"]).save(tmp_path / "left.png")
    args = [spec.format(lora=lora_files[0], triggered=triggered, folder=tmp_path),
            *(o.format(folder=tmp_path) for o in options)]
    result = CliRunner().invoke(main, ["compose", *args, "--images", str(tmp_path / "images")])
    assert_clean_error(result, *fragments)


def test_commands_without_regions_refuse_a_mask(lora_files, masks, tmp_path):
    spec = f"{lora_files[0]}:0.8#mouth"
    result = CliRunner().invoke(main, ["bake", str(tmp_path), spec, "-o", str(tmp_path / "baked.safetensors")])
    assert_clean_error(result, f"{spec}: only --method regional and sequential use masks, not bake")


def test_attention_maps_are_placed_on_the_grid_of_their_layer():
    """A stride-2 downsample rounds up: a 9 × 7 latent is seen as 5 × 4, then 3 × 2, by deeper layers."""
    from loramix.render.regions import layer_grid

    assert [layer_grid(8, 8, n) for n in (64, 16, 4)] == [(8, 8), (4, 4), (2, 2)]
    assert [layer_grid(9, 7, n) for n in (63, 20, 6)] == [(9, 7), (5, 4), (3, 2)]


@pytest.mark.slow  # loads a second toy pipeline for the unfused reference and renders five times (about 2.6 s)
def test_a_scheduled_region_follows_its_schedule_step_by_step(pipeline, loras, lora_files, masks):
    """Regional with a step schedule (ComfyUI's hook keyframes on a masked LoRA): over everything, a LoRA on
    at every step renders exactly its plain weight; on for the later half only, it renders what the pipeline
    renders with the same schedule put on step by step (unfused adapters), and neither the base nor the LoRA
    throughout."""
    from loramix.models.load import load_pipeline
    from loramix.models.loras import PipelineLoras
    from loramix.render.core import render
    from loramix.render.multi import render_multi
    from loramix.render.scheduled import StepWeights

    def regional(weight: str):
        spec = parse_weight_spec(f"{lora_files[0]}:{weight}#{masks['white']}")
        return pixels(render_multi(pipeline, loras, [spec], settings(), "regional"))

    plain = regional("0.8")
    assert (regional("0.8@0-1") == plain).all()
    late = regional("0.8@0.5-1")
    reference_pipeline = load_pipeline("toy")
    step_weights = StepWeights(PipelineLoras(reference_pipeline, fuse=False),
                               (parse_weight_spec(f"{lora_files[0]}:0.8@0.5-1"),))
    step_weights.start()
    assert np.abs(late - pixels(render(reference_pipeline, settings(), on_step=step_weights))).max() <= 1
    base = pixels(render(pipeline, settings()))
    assert np.abs(late - plain).mean() > 0.5 and np.abs(late - base).mean() > 0.5


def test_a_late_lora_with_its_own_prompt_leaves_the_base_alone_until_it_starts(pipeline, loras, lora_files, masks):
    """The recommended composition (`a.safetensors:1@0.4-1#mask.png` with `--lora-prompt`): while the LoRA is
    off, its prompt changes nothing and the base renders alone; once it acts, its region follows its prompt."""
    from dataclasses import replace

    from loramix.render.multi import denoise_multi

    late = parse_weight_spec(f"{lora_files[0]}:0.8@0.4-1#{masks['left']}")
    prompted = replace(late, prompt="a sad face on a blue background")
    base = WeightedFile(lora_files[0], 0.8, mask=masks["black"])  # an empty region: the base alone

    one_step = settings(steps=1)  # its only step lies at 0, before the LoRA starts
    assert torch.equal(denoise_multi(pipeline, loras, [prompted], one_step, "regional"),
                       denoise_multi(pipeline, loras, [base], one_step, "regional"))
    with_prompt = denoise_multi(pipeline, loras, [prompted], settings(), "regional")
    without = denoise_multi(pipeline, loras, [late], settings(), "regional")
    alone = denoise_multi(pipeline, loras, [base], settings(), "regional")
    assert not torch.allclose(with_prompt[..., :4], without[..., :4])  # its half follows its own prompt
    assert not torch.allclose(without[..., :4], alone[..., :4])  # and the LoRA acts there from 0.4 on
