"""Recipes: TOML onto a dataclass, flags over keys, helpful errors; every shipped recipe is valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from loramix.cli import main
from loramix.train.dataset import DatasetError, load_dataset
from loramix.train.recipe import KEYS, RecipeError, TrainRecipe, help_of, make_recipe, read_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_flags_override_keys_and_paths_are_relative_to_the_recipe(tmp_path):
    path = write(tmp_path, 'dataset = "data"\nrank = 4\nsteps = 10\n')
    recipe = make_recipe(path, {"rank": 16, "learning_rate": 3e-4})
    assert (recipe.rank, recipe.learning_rate, recipe.steps, recipe.epochs) == (16, 3e-4, 10, None)
    assert (recipe.alpha, recipe.effective_alpha, recipe.scale) == (None, 16.0, 1.0)
    assert Path(recipe.dataset) == tmp_path / "data"
    assert recipe.name == "run" and recipe.output is None and recipe.run_folder == Path("runs") / "run"


def test_unset_keys_take_their_values_from_elsewhere_and_the_recipe_keeps_what_was_asked():
    recipe = TrainRecipe(dataset="d", epochs=2, learning_rate=3e-4)
    assert (recipe.effective_alpha, recipe.effective_text_encoder_learning_rate) == (8.0, 3e-4)
    assert (recipe.adapter_name, recipe.run_folder) == ("lora", Path("runs") / "lora")
    named_by_output = TrainRecipe(dataset="d", steps=1, output="out/mustache-v2")
    assert (named_by_output.adapter_name, named_by_output.run_folder) == ("mustache-v2", Path("out/mustache-v2"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.alpha = 4.0  # type: ignore[misc]


def test_the_saved_recipe_records_the_values_used_and_rebuilds_the_same_run():
    recipe = make_recipe(None, {"dataset": "d", "steps": 3, "rank": 4, "name": "m"})
    saved = recipe.as_dict()
    assert saved["alpha"] == 4.0 and saved["text_encoder_learning_rate"] == recipe.learning_rate
    assert saved["output"] == str(Path("runs") / "m") and saved["name"] == "m"
    assert (saved["steps"], saved["epochs"], saved["resolution"], saved["snr_gamma"]) == (3, None, None, None)
    assert make_recipe(None, saved).as_dict() == saved


@pytest.mark.parametrize("text, message", [
    ("alpha = 0", r"alpha: must be positive, got 0; leave alpha out for alpha = rank"),
    ("resolution = 0", r"resolution: must be positive, got 0; leave resolution out for the base's own"),
    ("text_encoder_learning_rate = 0.0", r"text_encoder_learning_rate: must be positive, got 0\.0; "
                                         r"leave text_encoder_learning_rate out for the same rate as learning_rate"),
    ("steps = 0\nepochs = 3", r"steps: must be positive, got 0; leave steps out to train by epochs"),
    ("epochs = 0", r"epochs: must be positive, got 0; leave epochs out to train by steps"),
    ("sample_steps = 0", r"sample_steps: must be positive, got 0; leave sample_steps out for the base's default"),
    ("snr_gamma = 0.0", r"snr_gamma: must be positive, got 0\.0; leave snr_gamma out for plain MSE"),
    ('output = ""', r"output: empty; leave output out for runs/<name>"),
    ('name = ""', r"name: empty; leave name out to name the adapter after the recipe file"),
])
def test_zero_no_longer_means_unset_and_the_message_says_to_leave_the_key_out(tmp_path, text, message):
    """Before None meant "not set", 0 or "" did; a recipe still written that way is told what to write."""
    body = 'dataset = "d"\n' + ("" if "steps" in text else "steps = 5\n") + text + "\n"
    with pytest.raises(RecipeError, match=message):
        make_recipe(write(tmp_path, body), {})


def test_every_key_has_help_and_train_help_shows_it():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0, result.output
    shown = "".join(result.output.split())  # help is wrapped, at spaces and hyphens
    for key in KEYS:
        assert help_of(key).strip(), f"{key} has no help"
        assert "".join(f"Recipe key {key}".split()) in shown
        assert "".join(help_of(key).split()) in shown, f"--{key.replace('_', '-')} does not show {key}'s help"


def test_an_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'learing_rate' \(did you mean 'learning_rate'\?\)"):
        read_recipe(write(tmp_path, 'dataset = "d"\nlearing_rate = 1e-4\n'))
    with pytest.raises(RecipeError, match=r"option: unknown key 'rnak' \(did you mean 'rank'\?\)"):
        make_recipe(None, {"dataset": "d", "steps": 1, "rnak": 4})


@pytest.mark.parametrize("text, message", [
    ('dataset = "d"\nsteps = 5\nrank = "8"\n', r"rank must be int, got '8'"),
    ('dataset = "d"\nsteps = 5\ntargets = "to_q"\n', r"targets must be a list of strings"),
    ('dataset = "d"\nsteps = 5\nquantize = "nf8"\n', r"quantize: 'nf8' is not one of nf4, int8, none"),
    ('dataset = "d"\n', r"steps or epochs: set one of them"),
    ('dataset = "d"\nsteps = 5\nepochs = 2\n', r"set only one of them"),
    ('steps = 5\n', r"dataset: missing"),
    ('dataset = "d"\nsteps = 5\nresolution = 100\n', r"resolution: must be a multiple of 8"),
    ('dataset = "d"\nsteps = 5\ncaption_template = "{trigger}"\n', r"has no \{caption\}"),
    ('dataset = "d"\nsteps = 5\ncaption_template = "{caption} {style}"\n', r"only \{trigger\} and \{caption\}"),
    ('dataset = "d"\nsteps = 5\ndropout = 1.0\n', r"dropout: must be in \[0, 1\)"),
    ('dataset = "d"\nsteps = 5\ncaption_dropout = -0.1\n', r"caption_dropout: must be in \[0, 1\), got -0.1"),
    ('dataset = "d"\nsteps = 5\ncaption_dropout = 1\n', r"caption_dropout: must be in \[0, 1\), got 1"),
    ('dataset = "d"\nsteps = 5\nmin_timestep = -1\n', r"min_timestep: must not be negative, got -1"),
    ('dataset = "d"\nsteps = 5\nmax_timestep = 0\n', r"max_timestep: must be positive, got 0; leave max_timestep out"),
    ('dataset = "d"\nsteps = 5\nmin_timestep = 400\nmax_timestep = 400\n',
     r"min_timestep 400 and max_timestep 400: .* min_timestep must be below it"),
    ('dataset = [\n', r"not valid TOML"),
])
def test_bad_values_are_named(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        make_recipe(write(tmp_path, text), {})


def test_a_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"nothing\.toml: no such recipe file"):
        read_recipe(tmp_path / "nothing.toml")


def test_integers_are_accepted_for_floats(tmp_path):
    assert TrainRecipe(dataset="d", steps=1, learning_rate=1, alpha=4).effective_alpha == 4.0
    assert make_recipe(write(tmp_path, 'dataset = "d"\nsteps = 1\nalpha = 4\nsnr_gamma = 5\n'), {}).scale == 0.5


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_is_valid_and_its_data_is_there(path):
    assert path.read_text().startswith("# loramix train recipes/"), "a recipe opens with the command that runs it"
    recipe = make_recipe(path, {})
    data = load_dataset(recipe.dataset, 64, recipe.trigger, recipe.caption_template)
    assert len(data) >= 24
    assert all(recipe.trigger in caption for caption in data.captions)


def test_shipped_recipes_cover_the_three_attributes():
    assert {p.stem for p in RECIPES} >= {"mustache", "lipstick", "glasses"}


def test_dataset_from_caption_files_and_from_metadata_jsonl(tmp_path):
    from PIL import Image

    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (96, 64), colour).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"a {colour} square\n")
    data = load_dataset(tmp_path, 32, trigger="zq", caption_template="{trigger}, {caption}")
    assert data.pixels.shape == (2, 3, 32, 32)
    assert data.captions == ["zq, a red square", "zq, a blue square"]
    assert data.pixels[0, 0].mean().item() == pytest.approx(1.0)  # red
    assert data.pixels[1, 2].mean().item() == pytest.approx(1.0)  # blue
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "b.png", "text": "blue"}\n\n')
    assert load_dataset(tmp_path, 32).captions == ["blue"]


@pytest.mark.parametrize("setup, message", [
    (lambda d: [(d / "x.png").write_bytes(b"not a png"), (d / "x.txt").write_text("x")],
     r"x\.png: not a readable image .*\(skip_bad_images = true leaves such images out\)"),
    (lambda d: [(d / "x.png").write_bytes(b""), (d / "x.txt").write_text("x")], r"x\.png: not a readable image"),
    (lambda d: (d / "x.png").write_bytes(b""), r"x\.png: no caption \(1 images have none\), and no trigger"),
    (lambda d: None, r"no images"),
    (lambda d: (d / "metadata.jsonl").write_text('{"file_name": "../x.png", "text": "t"}'), r"leaves the dataset"),
    (lambda d: (d / "metadata.jsonl").write_text('{"file_name": 3}'), r"metadata\.jsonl:1: a row needs"),
    (lambda d: (d / "metadata.jsonl").write_text('nope'), r"metadata\.jsonl:1: not a JSON object"),
])
def test_bad_datasets_are_named(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path, 32)


def test_a_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: no such dataset folder"):
        load_dataset(tmp_path / "nowhere", 32)


def test_odd_modes_are_converted_uncaptioned_images_get_the_trigger_and_bad_ones_can_be_skipped(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray((np.full((40, 40), 65535)).astype(np.uint16)).save(tmp_path / "a-grey16.png")
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(tmp_path / "b-transparent.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "c-cmyk.jpg")
    Image.new("L", (40, 40), 0).save(tmp_path / "d-grey.png")
    (tmp_path / "e-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for name in ("a-grey16", "b-transparent", "c-cmyk", "e-broken"):
        (tmp_path / f"{name}.txt").write_text(name)
    data = load_dataset(tmp_path, 32, trigger="zq", skip_bad_images=True)
    assert data.captions == ["zq a-grey16", "zq b-transparent", "zq c-cmyk", "zq"]
    assert [p.name for p in data.uncaptioned] == ["d-grey.png"]
    assert len(data.skipped) == 1 and data.skipped[0].startswith(str(tmp_path / "e-broken.png"))
    white, red = torch.ones(3), torch.tensor([1.0, -1.0, -1.0])
    assert torch.allclose(data.pixels[0].mean(dim=(1, 2)), white, atol=0.01)  # 16-bit white stays white
    assert torch.allclose(data.pixels[1].mean(dim=(1, 2)), white, atol=0.01)  # transparent is white
    assert torch.allclose(data.pixels[2].mean(dim=(1, 2)), red, atol=0.05)  # CMYK red
    assert torch.allclose(data.pixels[3].mean(dim=(1, 2)), -white, atol=0.01)
