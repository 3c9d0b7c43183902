"""The XY grid: two LoRAs' weights swept over one seed, laid out and labelled."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.errors import LoramixError
from loramix.models.loras import PipelineLoras
from loramix.render.core import RenderSettings, render
from loramix.render.xy import XYSweep, parse_weights, render_xy


@pytest.fixture(scope="module")
def lora_files(toy_loras):
    return list(toy_loras(["mustache", "lipstick"]).values())  # their names label the axes


@pytest.mark.parametrize("text, weights", [
    ("0:1:0.25", (0, 0.25, 0.5, 0.75, 1)), ("0,0.5,1", (0, 0.5, 1)), ("-1:1:1", (-1, 0, 1)), ("0.3", (0.3,)),
    ("0:1:0.3", (0, 0.3, 0.6, 0.9)),
])
def test_weights_are_lists_or_ranges_with_the_stop_included(text, weights):
    assert parse_weights(text) == pytest.approx(weights)


@pytest.mark.parametrize("text", ["", "a,b", "1:0:0.5", "0:1:0", "0:1", "nan"])
def test_bad_weights_are_refused(text):
    with pytest.raises(LoramixError, match="weights"):
        parse_weights(text)


def test_the_grid_has_a_labelled_cell_per_pair_of_weights(pipeline, lora_files):
    loras = PipelineLoras(pipeline)
    settings = RenderSettings("a face", 3, 2, 4.0, 64, 64)
    sweep = XYSweep(*lora_files, x_weights=(0.0, 0.5, 1.0), y_weights=(0.0, 1.0))
    result = render_xy(pipeline, loras, sweep, settings, scale=2)
    grid = result.grid
    assert (len(result.cells), len(result.cells[0])) == (2, 3)
    assert grid.image.size == (grid.left + 3 * (128 + 2) - 2, grid.top + 2 * (128 + 2) - 2)
    assert grid.left > 20 and grid.top > 10  # room for the labels
    base = render(pipeline, [settings])[0]
    assert loras.active == ()  # the base is back after the sweep
    assert np.array_equal(np.asarray(result.cells[0][0]), np.asarray(base))  # both weights 0: the base
    assert not np.array_equal(np.asarray(result.cells[0][2]), np.asarray(base))
    assert not np.array_equal(np.asarray(result.cells[1][0]), np.asarray(result.cells[0][2]))
    canvas = np.asarray(grid.image)
    for r in range(2):
        for c in range(3):
            x, y = grid.left + c * (128 + 2), grid.top + r * (128 + 2)
            cell = np.asarray(result.cells[r][c].resize((128, 128), Image.NEAREST))
            assert np.array_equal(canvas[y : y + 128, x : x + 128], cell), (r, c)
    ink = canvas < 128  # dark text on white
    for c in range(3):  # a label over each column
        assert ink[: grid.top, grid.left + c * 130 : grid.left + c * 130 + 128].any(), c
    for r in range(2):  # and beside each row
        assert ink[grid.top + r * 130 : grid.top + r * 130 + 128, : grid.left].any(), r


def test_too_many_cells_are_refused_before_rendering(lora_files):
    with pytest.raises(LoramixError, match="more than 400"):
        XYSweep(*lora_files, x_weights=tuple(range(21)), y_weights=tuple(range(20)))


def test_xy_command_writes_the_grid_with_its_settings(lora_files, tmp_path):
    output = tmp_path / "xy.png"
    args = ["xy", "--x", lora_files[0], "--y", lora_files[1], "--x-weights", "0,1", "--y-weights", "0:1:1",
            "--prompt", "a face", "--steps", "2", "--seed", "4", "-o", str(output)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {output}: 2×2 cells (lipstick down, mustache across)" in result.output
    with Image.open(output) as image:
        assert image.info["parameters"].startswith("a face\nSteps: 2, Sampler: DPMSolverMultistepScheduler, "
                                                   "CFG scale: 4, Seed: 4, Size: 64x64, Model: toy, Lora hashes:")
    missing = CliRunner().invoke(main, [*args[:2], str(tmp_path / "nowhere.safetensors"), *args[3:]])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines()[-1].startswith("Error: LoRA ")
    assert "nowhere.safetensors: no such file" in missing.output
