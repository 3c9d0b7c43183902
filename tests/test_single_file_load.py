"""Loading a single-file checkpoint a model at a time: the same models as from the folder (quantized too), a
status line per model, and a damaged or mismatched file refused in one line before any model is filled."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from click.testing import CliRunner

from loramix.cli import main
from loramix.errors import BaseLoadError
from loramix.formats.original_layout import save_single_file
from loramix.models.load import bundled_base_path, load_pipeline
from loramix.testing import RecordingStatus, assert_clean_error

UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return save_single_file(load_pipeline("toy"), tmp_path_factory.mktemp("single") / "toy.safetensors")


def test_quantized_from_the_file_is_quantized_from_the_folder_and_each_model_says_so(toy_file):
    status = RecordingStatus()
    from_file = load_pipeline(toy_file, quantize="nf4", config=bundled_base_path(), status=status)
    from_folder = load_pipeline("toy", quantize="nf4")
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(from_file, name).state_dict(), getattr(from_folder, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        unequal = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert not unequal, (name, unequal[:3])
    assert status.lines == ["loading toy.safetensors (SD 1.x single file) in fp32, nf4",
                            "converting the text encoder (1 of 3)", "converting the UNet (2 of 3)",
                            "converting the VAE (3 of 3)"]
    from loramix.models.quantize import layers_to_quantize

    assert status.bars == [("quantizing the UNet to nf4", len(layers_to_quantize(load_pipeline("toy").unet, "nf4")))]


def test_unquantized_the_unet_converts_under_a_progress_bar(toy_file):
    status = RecordingStatus()
    pipeline = load_pipeline(toy_file, config=bundled_base_path(), status=status)
    assert status.bars == [("converting the UNet", len(pipeline.unet.state_dict()))]


def rewritten(data: bytes, change) -> bytes:
    """The file with its header changed by `change(header)`, its data as it was."""
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def doubled_first_dimension(header: dict) -> None:
    header[UNET_INPUT]["shape"][0] *= 2


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], "truncated or damaged: its data does not end where its header says"),
    (lambda data: data[:200], "truncated: it ends inside its header"),
    (lambda data: rewritten(data, doubled_first_dimension),
     "damaged: its header gives a tensor a shape its data does not hold"),
])
def test_a_damaged_file_is_refused_in_one_line_and_nothing_is_written(toy_file, tmp_path, damage, message):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(toy_file.read_bytes()))
    result = CliRunner().invoke(main, ["generate", "--prompt", "a face", "-n", "1", "--base", str(path),
                                       "-o", str(tmp_path / "out")])
    assert_clean_error(result, f"base {path}: {message}")
    assert not (tmp_path / "out").exists()


def test_a_file_missing_a_weight_is_refused_before_any_model_is_filled(toy_file, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(toy_file))
    missing = "first_stage_model.decoder.conv_out.weight"
    del tensors[missing]
    path = tmp_path / "incomplete.safetensors"
    save_file(tensors, str(path))
    status = RecordingStatus()
    with pytest.raises(BaseLoadError) as error:
        load_pipeline(path, config=bundled_base_path(), status=status)
    assert str(error.value) == (f"base {path}: holds no {missing}, which the SD 1.x VAE needs: not a whole SD 1.x "
                                "checkpoint")
    assert status.lines == []


def test_a_checkpoint_of_other_sizes_names_the_first_weight_that_differs(toy_file):
    """The toy base is SD 1.x by its keys, but not at SD 1.5's published sizes: without its own config it is
    refused from the header, with no model filled."""
    with pytest.raises(BaseLoadError) as error:
        load_pipeline(toy_file)
    message = str(error.value)
    assert message.startswith(f"base {toy_file}: ") and "where the SD 1.x" in message, message
    assert message.endswith("a checkpoint of other sizes than the published architecture's"), message
