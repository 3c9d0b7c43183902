"""Masked-loss training: masks read beside their images or from alpha, brought to the latent grid, and the loss
weighted by them; `loramix faces --masks` writes masks that cover the attribute and nothing far from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.errors import DatasetError, RecipeError
from loramix.testing import assert_clean_error
from loramix.toy.face_drawing import attribute_box, attribute_mask, draw_face
from loramix.toy.face_spec import MASK_GROWTH, sample_face
from loramix.toy.faces import write_dataset
from loramix.train.dataset import load_dataset
from loramix.train.loop import train
from loramix.train.recipe import make_recipe
from loramix.train.trainee import latent_grid, per_example_loss


def write_image(folder, name: str, image: Image.Image, caption: str = "a face") -> None:
    image.save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(caption)


def block_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


# --- the loss ---------------------------------------------------------------------------------------------


def test_weights_of_ones_give_exactly_the_plain_loss():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(4, 8, 8, 8, generator=generator), torch.randn(4, 8, 8, 8, generator=generator)
    plain = per_example_loss(prediction, target)
    assert torch.equal(per_example_loss(prediction, target, torch.ones(4, 1, 8, 8)), plain)
    assert torch.equal(plain, ((prediction - target) ** 2).mean(dim=(1, 2, 3)))


def test_a_zero_weight_outside_the_mask_gives_zero_gradient_from_there():
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(2, 8, 8, 8, generator=generator, requires_grad=True)
    target = torch.randn(2, 8, 8, 8, generator=generator)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 5:7, 2:6] = 1.0
    mask[1, :, 0, 0] = 0.5  # a latent pixel half covered by the mask still learns, at half weight
    outside = 0.0
    per_example_loss(prediction, target, outside + (1 - outside) * mask).mean().backward()
    gradient = prediction.grad.abs().sum(dim=1, keepdim=True)  # (2, 1, 8, 8)
    assert torch.all(gradient[mask == 0] == 0)
    assert torch.all(gradient[mask > 0] > 0)


def test_the_weighted_loss_is_the_weighted_mean_and_a_small_outside_weight_counts_a_little():
    prediction, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert per_example_loss(prediction, target, mask).item() == 1.0  # only the masked pixel
    weights = 0.1 + 0.9 * mask
    expected = (1 * 1 + 0.1 * (4 + 9 + 16)) / (1 + 0.3)
    assert per_example_loss(prediction, target, weights).item() == pytest.approx(expected)


def test_masks_come_to_the_latent_grid_as_area_averages():
    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 0:4, 0:4] = 1.0  # a quarter of latent pixel (0, 0)
    mask[:, :, 8:16, 8:16] = 1.0  # all of latent pixel (1, 1)
    grid = latent_grid(mask, (8, 8))
    assert grid.shape == (1, 1, 8, 8)
    assert grid[0, 0, 0, 0] == 0.25 and grid[0, 0, 1, 1] == 1.0 and grid.sum() == 1.25


# --- reading masks ----------------------------------------------------------------------------------------


def test_a_mask_file_is_read_and_cut_as_its_image_is(tmp_path):
    # A 96×64 image: its short side scaled to 32 (48×32), then centre-cropped to 32×32; the band lands at 12-20.
    image = Image.new("RGB", (96, 64), (0, 0, 0))
    image.paste((255, 255, 255), (40, 0, 56, 64))  # a white band in the middle third
    write_image(tmp_path, "0000", image)
    block_mask((96, 64), (40, 0, 56, 64)).save(tmp_path / "0000.mask.png")
    data = load_dataset(tmp_path, 32, masks=True)
    assert data.masks.shape == (1, 1, 32, 32) and data.unmasked == []
    white_pixels = (data.pixels[0].mean(dim=0) > 0.5).float()
    assert torch.equal((data.masks[0, 0] > 0.5).float(), white_pixels)
    assert data.masks[0, 0, :, 12:16].min() == 1.0 and data.masks[0, 0, :, :8].max() == 0.0


def test_the_alpha_channel_is_the_mask_when_there_is_no_mask_file(tmp_path):
    image = Image.new("RGBA", (64, 64), (200, 100, 50, 0))
    image.paste((200, 100, 50, 255), (0, 0, 32, 64))  # the left half opaque
    write_image(tmp_path, "0000", image)
    data = load_dataset(tmp_path, 64, masks=True)
    assert torch.equal(data.masks[0, 0, :, :32], torch.ones(64, 32))
    assert torch.equal(data.masks[0, 0, :, 32:], torch.zeros(64, 32))


def test_images_without_masks_are_masked_by_ones_and_listed(tmp_path):
    write_image(tmp_path, "0000", Image.new("RGB", (64, 64), "white"))
    block_mask((64, 64), (0, 0, 8, 8)).save(tmp_path / "0000.mask.png")
    write_image(tmp_path, "0001", Image.new("RGB", (64, 64), "white"))
    data = load_dataset(tmp_path, 64, masks=True)
    assert len(data) == 2  # the mask file is not a training image of its own
    assert data.unmasked == [tmp_path / "0001.png"]
    assert torch.equal(data.masks[1], torch.ones(1, 64, 64)) and data.masks[0].sum() == 64


def test_mask_files_are_not_images_and_are_ignored_without_masked_loss(tmp_path):
    write_image(tmp_path, "0000", Image.new("RGB", (64, 64), "white"))
    block_mask((64, 64), (0, 0, 8, 8)).save(tmp_path / "0000.mask.png")
    data = load_dataset(tmp_path, 64)
    assert len(data) == 1 and data.masks is None


@pytest.mark.parametrize("write_mask, message", [
    (lambda path: block_mask((32, 32), (0, 0, 8, 8)).save(path),
     r"0000\.mask\.png: 32×32, but its image 0000\.png is 64×64"),
    (lambda path: path.write_bytes(b"not a png at all"), r"0000\.mask\.png: not a readable image"),
    (lambda path: Image.new("L", (64, 64), 0).save(path), r"0000\.mask\.png: the mask is all black"),
])
def test_a_bad_mask_is_a_one_line_error_naming_it(tmp_path, write_mask, message):
    write_image(tmp_path, "0000", Image.new("RGB", (64, 64), "white"))
    write_mask(tmp_path / "0000.mask.png")
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(tmp_path, 64, masks=True)
    assert "\n" not in str(error.value)


def test_masked_loss_without_any_mask_is_an_error(tmp_path):
    write_image(tmp_path, "0000", Image.new("RGB", (64, 64), "white"))
    with pytest.raises(DatasetError, match=r"masked_loss is on, but no image has a mask"):
        load_dataset(tmp_path, 64, masks=True)


def test_a_bad_mask_stops_a_training_run_in_one_line(tmp_path):
    write_image(tmp_path, "0000", Image.new("RGB", (64, 64), "white"))
    block_mask((32, 32), (0, 0, 8, 8)).save(tmp_path / "0000.mask.png")
    result = CliRunner().invoke(main, ["train", "--dataset", str(tmp_path), "--steps", "1", "--masked-loss",
                                       "--output", str(tmp_path / "run")])
    assert_clean_error(result, "0000.mask.png: 32×32, but its image 0000.png is 64×64")


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_masked_loss_weight_outside_0_to_1_is_named(weight):
    with pytest.raises(RecipeError, match=rf"masked_loss_weight: must be in \[0, 1\], got {weight}"):
        make_recipe(None, {"dataset": "d", "steps": 1, "masked_loss": True, "masked_loss_weight": weight})


# --- training with masks ----------------------------------------------------------------------------------


def masked_recipe(tmp_path, dataset, name: str, **overrides):
    values = dict(dataset=str(dataset), trigger="mustache", caption_template="{caption}", steps=2, batch_size=2,
                  learning_rate=1e-3, rank=2, quantize="none", snr_gamma=5.0, flip=True, final_samples=False,
                  output=str(tmp_path / name), name=name)
    return make_recipe(None, {**values, **overrides})


@pytest.mark.slow  # short training runs on the toy base, with and without masks (about 2 s)
def test_training_with_masks_of_ones_is_training_without_masks_and_real_masks_are_not(tmp_path):
    """End to end (flips, min-SNR, the whole loop): white masks everywhere give the plain run bit for bit, and
    the faces' own masks give another LoRA."""
    from safetensors.torch import load_file

    data = tmp_path / "data"
    write_dataset(data, 4, seed=5, mustache=True, masks=True)
    plain = train(masked_recipe(tmp_path, data, "plain"))
    masked = train(masked_recipe(tmp_path, data, "masked", masked_loss=True, masked_loss_weight=0.0))
    for index in range(4):
        Image.new("L", (64, 64), 255).save(data / f"{index:04d}.mask.png")
    ones = train(masked_recipe(tmp_path, data, "ones", masked_loss=True, masked_loss_weight=0.0))
    assert plain.final_loss == ones.final_loss != masked.final_loss
    plain_weights, ones_weights = load_file(str(plain.adapter)), load_file(str(ones.adapter))
    masked_weights = load_file(str(masked.adapter))
    assert all(torch.equal(plain_weights[key], ones_weights[key]) for key in plain_weights)
    assert not all(torch.equal(plain_weights[key], masked_weights[key]) for key in plain_weights)


def test_prior_preservation_pulls_the_outside_towards_the_base_and_leaves_masks_of_ones_plain():
    prediction, target, base = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ones = torch.ones(3, 1, 8, 8)
    plain = per_example_loss(prediction, target)
    assert torch.equal(per_example_loss(prediction, target, ones, base, 1 - ones, 2.0), plain)
    # Half the image outside the mask: the noise term over the mask, plus λ times the mean drift outside.
    mask = torch.zeros(3, 1, 8, 8)
    mask[..., :4] = 1
    both = per_example_loss(prediction, target, mask, base, 1 - mask, 2.0)
    noise_term = ((prediction - target) ** 2)[..., :4].mean(dim=(1, 2, 3))
    drift_term = ((prediction - base) ** 2)[..., 4:].mean(dim=(1, 2, 3))
    assert torch.allclose(both, noise_term + 2.0 * drift_term)
    prediction.requires_grad_(True)
    per_example_loss(prediction, target, mask, base, 1 - mask, 2.0).sum().backward()
    outside_gradient = prediction.grad[..., 4:]  # only the pull towards the base there
    assert torch.allclose(outside_gradient, 2.0 * 2 * (prediction - base).detach()[..., 4:] / (4 * 8 * 4))


def test_a_fresh_lora_predicts_what_the_base_does_so_the_prior_term_starts_at_zero(tmp_path):
    """peft starts B at zero: with the LoRA off or on, the UNet predicts the same, bit for bit, and the prior
    term is zero until the LoRA learns; a trained LoRA's prediction moves away from the base's."""
    from loramix.models.load import load_pipeline
    from loramix.train.trainee import LoraTrainee

    data = tmp_path / "data"
    write_dataset(data, 2, seed=5, mustache=True, masks=True)
    recipe = masked_recipe(tmp_path, data, "prior", masked_loss=True, masked_prior_preservation_weight=1.0,
                           train_text_encoder=True)
    model = LoraTrainee(load_pipeline("toy", quantize="none"), recipe, torch.device("cpu"))
    unet = model.pipeline.unet
    shape = (2, unet.config.in_channels, 8, 8)
    noisy, timesteps = torch.randn(shape, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    conditioning = model.encode_text(["a face with a mustache"] * 2)
    hidden = conditioning.pop("encoder_hidden_states")
    with torch.no_grad():
        on = unet(noisy, timesteps, hidden).sample
    off = model.base_prediction(noisy, timesteps, hidden, None, ["a face with a mustache"] * 2)
    assert torch.equal(on, off)
    assert all(p.requires_grad for p in model.trainable_parameters())  # switched back on for training
    with torch.no_grad():
        for parameter in model.unet_parameters():
            parameter.add_(0.05)
        moved = unet(noisy, timesteps, hidden).sample
    assert not torch.equal(moved, model.base_prediction(noisy, timesteps, hidden, None, ["a face"] * 2))
    assert torch.equal(off, model.base_prediction(noisy, timesteps, hidden, None, ["a face with a mustache"] * 2))


def test_a_negative_prior_preservation_weight_is_named():
    with pytest.raises(RecipeError, match="masked_prior_preservation_weight: must be ≥ 0, got -1"):
        make_recipe(None, {"dataset": "d", "steps": 1, "masked_loss": True, "masked_prior_preservation_weight": -1})


def test_cached_masks_flip_with_their_images(tmp_path):
    from loramix.models.load import load_pipeline
    from loramix.train.trainee import LoraTrainee

    data = tmp_path / "data"
    write_dataset(data, 2, seed=5, mustache=True, masks=True)
    recipe = masked_recipe(tmp_path, data, "flips", masked_loss=True)
    model = LoraTrainee(load_pipeline("toy", quantize="none"), recipe, torch.device("cpu"))
    examples = model.cache(load_dataset(data, 64, masks=True), flip=True)
    assert examples.latent_masks.shape == (4, 1, 8, 8)
    assert torch.equal(examples.latent_masks[2:], examples.latent_masks[:2].flip(-1))
    # A mustache is symmetric about the face's centre, not the image's: its flip is not itself.
    assert not torch.equal(examples.latent_masks[2:], examples.latent_masks[:2])


# --- `loramix faces --masks` ------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["mustache", "lipstick", "glasses"])
def test_faces_masks_cover_the_attribute_and_nothing_far_from_it(tmp_path, attribute):
    result = CliRunner().invoke(main, ["faces", str(tmp_path), f"--{attribute}", "--masks", "--count", "8",
                                       "--seed", "3"])
    assert result.exit_code == 0 and "and masks" in result.output, result.output
    masks = sorted(tmp_path.glob("*.mask.png"))
    assert [m.name for m in masks] == [f"{i:04d}.mask.png" for i in range(8)]
    for mask_file in masks:
        spec = sample_face(int(Image.open(tmp_path / mask_file.name.replace(".mask", "")).text["loramix.face_seed"]),
                           **{attribute: True})
        mask = np.asarray(Image.open(mask_file)) > 0
        plain = dataclasses.replace(spec, mustache=None, lipstick=None, glasses=None)
        changed = (np.asarray(draw_face(spec), dtype=int) != np.asarray(draw_face(plain), dtype=int)).any(axis=-1)
        assert changed.sum() > 20 and mask[changed].all(), mask_file  # every pixel the attribute drew
        left, top, right, bottom = attribute_box(spec, attribute)
        near = np.zeros_like(mask)
        near[max(0, top - MASK_GROWTH):bottom + MASK_GROWTH, max(0, left - MASK_GROWTH):right + MASK_GROWTH] = True
        assert not (mask & ~near).any(), mask_file  # and nothing outside the attribute's box
        assert mask.mean() < 0.2, mask_file


def test_a_mask_is_grown_by_the_growth_and_no_more():
    spec = sample_face(11, mustache=True)
    tight = np.asarray(attribute_mask(spec, grow=0)) > 0
    grown = np.asarray(attribute_mask(spec)) > 0
    assert tight.sum() < grown.sum()
    rows, columns = np.nonzero(grown)
    tight_rows, tight_columns = np.nonzero(tight)
    assert rows.min() == max(0, tight_rows.min() - MASK_GROWTH) and columns.max() == tight_columns.max() + MASK_GROWTH


def test_plain_faces_have_nothing_to_mask(tmp_path):
    result = CliRunner().invoke(main, ["faces", str(tmp_path), "--masks", "--count", "2"])
    assert_clean_error(result, "masks: plain faces have no attribute to mask")
