"""Captions with several lines (`caption_per_line`): each line a caption of the image, one drawn per step from the
run's seeded generator, and runs without them exactly what they were. Captions left empty (`caption_dropout`):
each with its chance, read from the cached text's empty row when the text encoder is frozen."""

from __future__ import annotations

import pytest
import torch

from loramix.toy.faces import write_dataset
from loramix.train.dataset import load_dataset
from loramix.train.loop import train
from loramix.train.recipe import make_recipe
from loramix.train.trainee import LoraTrainee


def write_pair(folder, name: str, text: str) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 150, 120)).save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(text)


def test_each_line_is_a_caption_only_when_asked(tmp_path):
    write_pair(tmp_path, "0000", "a face\nwith a mustache\n\n a mustache \n")
    write_pair(tmp_path, "0001", "one line\n")
    whole = load_dataset(tmp_path, 64, trigger="m", caption_template="{trigger}, {caption}")
    assert whole.captions == ["m, a face with a mustache a mustache", "m, one line"] and whole.alternatives is None
    lines = load_dataset(tmp_path, 64, trigger="m", caption_template="{trigger}, {caption}", caption_per_line=True)
    assert lines.captions == ["m, a face", "m, one line"]
    assert lines.alternatives == [("m, a face", "m, with a mustache", "m, a mustache"), ("m, one line",)]
    single = tmp_path / "single"
    single.mkdir()
    write_pair(single, "0000", "just one\n")
    assert load_dataset(single, 64, caption_per_line=True).alternatives is None  # nothing to draw from


@pytest.fixture(scope="module")
def trainee(tmp_path_factory):
    from loramix.models.load import load_pipeline

    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, 3, seed=4, mustache=True, phrasings=4)
    recipe = make_recipe(None, {"dataset": str(folder), "steps": 1, "quantize": "none", "caption_per_line": True})
    model = LoraTrainee(load_pipeline("toy", quantize="none"), recipe, torch.device("cpu"))
    return model, load_dataset(folder, 64, caption_per_line=True)


def test_a_batch_draws_one_of_each_examples_captions_and_its_cached_text(trainee):
    model, data = trainee
    examples = model.cache(data, flip=False)
    assert examples.text["encoder_hidden_states"].shape[0] == 12  # every caption of every image, encoded once
    seen = set()
    for seed in range(40):
        index = torch.tensor([0, 2, 2])
        captions, rows = model.captions_of(examples, index, torch.Generator().manual_seed(seed))
        for i, caption, row in zip(index.tolist(), captions, rows.tolist()):
            assert caption in data.alternatives[i] and 4 * i <= row < 4 * i + 4
            assert caption == data.alternatives[i][row - 4 * i]
            seen.add(caption)
    assert seen == set(data.alternatives[0]) | set(data.alternatives[2])  # every line gets drawn


def test_without_alternatives_the_generator_is_not_drawn_from(trainee):
    model, data = trainee
    examples = model.cache(data, flip=False)
    examples.alternatives = None
    generator = torch.Generator().manual_seed(3)
    captions, rows = model.captions_of(examples, torch.tensor([1, 0]), generator)
    assert captions == [data.captions[1], data.captions[0]] and rows.tolist() == [1, 0]
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(3).get_state())


@pytest.mark.slow  # two short runs on the toy base
def test_a_run_with_caption_per_line_trains_and_differs_from_one_line_each(tmp_path):
    folder = tmp_path / "data"
    write_dataset(folder, 4, seed=4, mustache=True, phrasings=4)
    results = {}
    for per_line in (False, True):
        run = tmp_path / f"run-{per_line}"
        result = train(make_recipe(None, {"dataset": str(folder), "steps": 3, "batch_size": 2, "rank": 2,
                                          "caption_per_line": per_line, "train_text_encoder": True,
                                          "sample_every": 0, "final_samples": False, "output": str(run)}))
        results[per_line] = result.final_loss
    assert all(map(lambda loss: loss == loss, results.values()))  # finite, not NaN
    assert results[True] != results[False]  # other captions, another loss


@pytest.fixture(scope="module")
def dropping(tmp_path_factory):
    from loramix.models.load import load_pipeline

    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, 4, seed=5, mustache=True)
    recipe = make_recipe(None, {"dataset": str(folder), "steps": 1, "quantize": "none", "caption_dropout": 0.3})
    model = LoraTrainee(load_pipeline("toy", quantize="none"), recipe, torch.device("cpu"))
    return model, load_dataset(folder, 64)


def test_dropped_captions_are_empty_at_their_chance_and_read_the_empty_captions_text(dropping):
    from loramix.train.trainee import text_conditioning

    model, data = dropping
    examples = model.cache(data, flip=False)
    text = examples.text["encoder_hidden_states"]
    assert text.shape[0] == 5 and examples.empty_row == 4  # every caption, then the empty one
    assert torch.equal(text[4], text_conditioning(model.pipeline, [""], model.device, 64)["encoder_hidden_states"][0])
    assert not torch.equal(text[4], text[0])
    uncached = model.encode_text(["", data.captions[0]])["encoder_hidden_states"]  # a trained text encoder's way
    assert torch.allclose(uncached, text[[4, 0]], atol=1e-6)
    dropped = 0
    for seed in range(100):
        index = torch.tensor([0, 1, 2, 3])
        captions, rows = model.captions_of(examples, index, torch.Generator().manual_seed(seed))
        for i, caption, row in zip(index.tolist(), captions, rows.tolist()):
            assert (caption, row) in (("", 4), (data.captions[i], i))
            dropped += caption == ""
    assert 0.22 < dropped / 400 < 0.38  # 0.3 of 400 draws, within four standard deviations


def test_without_caption_dropout_no_empty_caption_is_encoded(trainee):
    model, data = trainee
    assert model.cache(data, flip=False).text["encoder_hidden_states"].shape[0] == 12  # no extra row
