"""Rendering compositions: fused exact sums, unfused adapters on a quantized base, switch and composite."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.lora.specs import WeightedFile
from loramix.testing import random_adapter

STEPS = 6


@pytest.fixture(scope="module")
def lora_files(toy_loras):
    """Two LoRAs of different ranks, so their composition concatenates unequal factors."""
    return list(toy_loras(["random0", "random1"], rank=[4, 8]).values())


def settings(count: int = 2):
    from loramix.render.core import RenderSettings

    return [RenderSettings("a smiling face", seed, STEPS, 4.0, 64, 64) for seed in range(count)]


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_fused_exact_matches_unfused_adapters_and_switching_back_restores_the_base(pipeline, lora_files):
    from loramix.models.load import load_pipeline
    from loramix.models.loras import PipelineLoras
    from loramix.render.core import render

    loras = PipelineLoras(pipeline)
    base = pixels(render(pipeline, settings()))
    pair = [WeightedFile(lora_files[0], 0.7), WeightedFile(lora_files[1], 0.5)]
    loras.apply(pair)
    fused = pixels(render(pipeline, settings()))
    assert np.abs(fused - base).mean() > 2  # the LoRAs change the images

    other = load_pipeline("toy")
    unfused_loras = PipelineLoras(other, fuse=False)
    unfused_loras.apply(pair)
    unfused = pixels(render(other, settings()))
    assert np.abs(unfused - fused).max() <= 2  # W + Σ wᵢΔWᵢ fused = peft's sum of side paths, to rounding

    loras.apply([WeightedFile(lora_files[1], 1.0)])
    loras.apply([])
    assert (pixels(render(pipeline, settings())) == base).all()  # exact: originals are copied back
    loras.apply([WeightedFile(lora_files[0], 0.0)])
    assert (pixels(render(pipeline, settings())) == base).all()  # weight 0 is the base
    loras.apply([])


@pytest.mark.slow  # loads a second toy pipeline as the reference and renders three times (about 2.3 s)
def test_switch_and_composite_reduce_to_the_pipeline_with_one_lora(pipeline, lora_files):
    """The generation-time loop is Stable Diffusion's: with one LoRA, both methods render what the pipeline
    itself renders with that LoRA; switching only after the last step never reaches the second LoRA."""
    from loramix.models.load import load_pipeline
    from loramix.models.loras import PipelineLoras
    from loramix.render.core import render
    from loramix.render.multi import render_multi

    reference_pipeline = load_pipeline("toy")
    reference_loras = PipelineLoras(reference_pipeline, fuse=False)
    first = WeightedFile(lora_files[0], 0.8)
    reference_loras.apply([first])
    reference = pixels(render(reference_pipeline, settings()))

    loras = PipelineLoras(pipeline)
    for method in ("switch", "composite"):
        alone = pixels(render_multi(pipeline, loras, [first], settings(), method))
        assert np.abs(alone - reference).max() <= 1, method
    both = [first, WeightedFile(lora_files[1], 0.8)]
    late_switch = pixels(render_multi(pipeline, loras, both, settings(), "switch", every=STEPS))
    assert np.abs(late_switch - reference).max() <= 1
    switching = pixels(render_multi(pipeline, loras, both, settings(), "switch", every=1))
    composite = pixels(render_multi(pipeline, loras, both, settings(), "composite"))
    assert np.abs(switching - reference).mean() > 1 and np.abs(composite - reference).mean() > 1
    assert np.abs(composite - switching).mean() > 0.3  # alternating every step comes close to averaging

    base = pixels(render(load_pipeline("toy"), settings()))
    assert (pixels(render(pipeline, settings())) == base).all()  # the named adapters are off afterwards


def test_compose_renders_images_with_their_settings(lora_files, tmp_path):
    out = tmp_path / "images"
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.7", f"{lora_files[1]}:0.5", "--prompt",
                                       "a face", "-n", "3", "--steps", "4", "--seed", "5", "--images", str(out),
                                       "-o", str(tmp_path / "ab.safetensors")])
    assert result.exit_code == 0, result.output
    assert "fused into the base weights" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["00000-5.png", "00001-6.png", "00002-7.png", "grid.png",
                                                     "manifest.jsonl"]
    parameters = Image.open(out / "00001-6.png").text["parameters"]
    assert parameters.startswith("a face <lora:random0:0.7> <lora:random1:0.5>\n")
    assert "Steps: 4" in parameters and "Seed: 6" in parameters and 'Lora hashes: "random0: ' in parameters
    assert "Composition:" not in parameters  # the exact sum is what <lora:…> weights mean everywhere
    assert (tmp_path / "ab.safetensors").is_file()

    # The same request again keeps every image; another method renders them again, and says which it was.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png")}
    again = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.7", f"{lora_files[1]}:0.5", "--prompt",
                                      "a face", "-n", "3", "--steps", "4", "--seed", "5", "--images", str(out)])
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0*.png")} == before
    dare = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.7", f"{lora_files[1]}:0.5", "--prompt",
                                     "a face", "-n", "3", "--steps", "4", "--seed", "5", "--images", str(out),
                                     "--method", "dare"])
    assert dare.exit_code == 0, dare.output
    parameters = Image.open(out / "00001-6.png").text["parameters"]
    assert parameters.endswith(", Generator: loramix, Composition: dare density 0.5 seed 5")


@pytest.mark.parametrize("method", ["ties", "switch"])
def test_compose_renders_on_a_quantized_base_without_fusing(lora_files, tmp_path, method):
    args = ["compose", f"{lora_files[0]}:0.7", f"{lora_files[1]}:0.5", "--prompt", "a face", "-n", "2",
            "--steps", "3", "--quantize", "nf4", "--method", method, "--images", str(tmp_path / "q")]
    result = CliRunner().invoke(main, args)
    if method == "ties":  # a merge would have to be fused into the 4-bit weights
        assert result.exit_code == 1 and result.output.startswith("Error: --method ties fuses a merge")
        assert not (tmp_path / "q").exists()
    else:
        assert result.exit_code == 0, result.output
        assert len(list((tmp_path / "q").glob("0*.png"))) == 2


def test_exact_unfused_on_nf4_base(lora_files, tmp_path):
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.7", "--prompt", "a face", "-n", "1",
                                       "--steps", "3", "--quantize", "nf4", "--images", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "unfused peft adapters on the nf4 base" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--method", "composite", "-o", "x.safetensors", "--prompt", "a face"], "Error: --method composite combines"),
    (["--method", "switch"], "Error: --method switch combines LoRAs while rendering: give --prompt"),
    ([], "Error: nothing to do"),
])
def test_compose_refuses_impossible_requests(lora_files, tmp_path, extra, message):
    result = CliRunner().invoke(main, ["compose", lora_files[0], *extra])
    assert result.exit_code == 1 and result.output.startswith(message) and len(result.output.splitlines()) == 1


def test_a_lora_for_another_base_is_refused_before_rendering(unet_attention_shapes, tmp_path):
    from loramix.formats.write import write_adapter

    foreign = tmp_path / "foreign.safetensors"
    write_adapter(random_adapter(unet_attention_shapes, 2, 2, 0), foreign)  # conftest's tiny UNet: another base
    result = CliRunner().invoke(main, ["compose", f"{foreign}:0.5", "--prompt", "a face", "--images",
                                       str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "foreign.safetensors" in result.output and "module unet." in result.output
    assert not (tmp_path / "out").exists()


def test_compose_sequential_writes_each_stage_and_a_strip(lora_files, tmp_path):
    out = tmp_path / "seq"
    result = CliRunner().invoke(main, ["compose", f"{lora_files[0]}:0.7", f"{lora_files[1]}:0.5", "--prompt",
                                       "a face", "--sequential", "-n", "2", "--steps", "4", "--seed", "3",
                                       "--images", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["00000-3", "00000-3.png", "00001-4", "00001-4.png",
                                                     "grid.png", "manifest.jsonl"]
    stages = sorted(p.name for p in (out / "00000-3").iterdir())
    assert len(stages) == 4 and stages[-1] == "strip.png" and stages[0].startswith("stage-0")
    assert 'Stages: "' in Image.open(out / "00000-3" / "strip.png").text["parameters"]
    # Each sequence's last stage is its image, beside its folder, with the whole sequence in its text.
    last = Image.open(out / "00000-3" / stages[-2])
    final = Image.open(out / "00000-3.png")
    assert np.array_equal(np.asarray(final), np.asarray(last))
    assert final.text["parameters"].endswith(', Denoising strength: 0.75, Stages: "text-to-image > random0:0.7 > '
                                             'random1:0.5"')


def test_more_loras_than_memory_allows_is_refused_before_loading_the_base(lora_files, tmp_path):
    huge = tmp_path / "huge.safetensors"
    with open(huge, "wb") as f:  # sparse: 1 TiB declared, no disk used
        f.truncate(2**40)
    result = CliRunner().invoke(main, ["compose", lora_files[0], str(huge), "--prompt", "a face", "--images",
                                       str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "the 2 LoRA files take 1024.0 GiB" in result.output and "use fewer LoRAs at once" in result.output
    assert not (tmp_path / "out").exists()


def test_every_render_command_writes_the_same_a1111_fields_for_the_same_base(lora_files, tmp_path):
    """generate, compose --prompt, edit and xy render through one loop: for a base given as a folder, each
    records the folder's name as the model, and generate and compose write the same text for the same image."""
    from loramix.models.load import bundled_base_path

    folder = str(bundled_base_path())
    lora = f"{lora_files[0]}:0.7"
    common = ["--prompt", "a face", "--steps", "3", "--seed", "2", "--base", folder]
    runs = {
        "generate": ["generate", "-n", "1", "--lora", lora, "-o", str(tmp_path / "g")],
        "compose": ["compose", lora, "-n", "1", "--images", str(tmp_path / "c")],
        "edit": ["edit", lora, "-o", str(tmp_path / "e")],
        "xy": ["xy", "--x", lora_files[0], "--y", lora_files[1], "--x-weights", "0.7", "--y-weights", "0",
               "-o", str(tmp_path / "xy.png")],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(main, args + common)
        assert result.exit_code == 0, (name, result.output)
    texts = {
        "generate": Image.open(tmp_path / "g" / "00000-2.png").text["parameters"],
        "compose": Image.open(tmp_path / "c" / "00000-2.png").text["parameters"],
        "edit": Image.open(tmp_path / "e" / "stage-1-random0.png").text["parameters"],
        "xy": Image.open(tmp_path / "xy.png").text["parameters"],
    }
    assert texts["generate"] == texts["compose"]
    for name, text in texts.items():
        fields = dict(field.split(": ", 1) for field in text.splitlines()[-1].split(", ") if ": " in field)
        assert fields["Model"] == "toy" and fields["Sampler"] == "DPMSolverMultistepScheduler", (name, fields)
        assert fields["Steps"] == "3" and fields["Seed"] == "2" and fields["Size"] == "64x64", (name, fields)


def test_every_render_command_takes_a_width_and_height(lora_files, tmp_path):
    lora = f"{lora_files[0]}:0.7"
    size = ["--width", "48", "--height", "64", "--steps", "2", "--prompt", "a face"]
    runs = {
        "compose": (["compose", lora, "-n", "1", "--images", str(tmp_path / "c")], tmp_path / "c" / "00000-0.png"),
        "sequential": (["compose", lora, "-n", "1", "--sequential", "--images", str(tmp_path / "s")],
                       tmp_path / "s" / "00000-0" / "stage-1-random0.png"),
        "edit": (["edit", lora, "-o", str(tmp_path / "e")], tmp_path / "e" / "stage-1-random0.png"),
        "generate": (["generate", "-n", "1", "--lora", lora, "-o", str(tmp_path / "g")],
                     tmp_path / "g" / "00000-0.png"),
    }
    for name, (args, image) in runs.items():
        result = CliRunner().invoke(main, args + size)
        assert result.exit_code == 0, (name, result.output)
        with Image.open(image) as png:
            assert png.size == (48, 64), name
            assert "Size: 48x64" in png.text["parameters"], name
    grid = CliRunner().invoke(main, ["xy", "--x", lora_files[0], "--y", lora_files[1], "--x-weights", "0,1",
                                     "--y-weights", "0", "-o", str(tmp_path / "xy.png"), *size])
    assert grid.exit_code == 0, grid.output
    assert "Size: 48x64" in Image.open(tmp_path / "xy.png").text["parameters"]
    for command in (["compose", lora, "--prompt", "a face"], ["edit", lora, "--prompt", "a face", "-o", "x"],
                    ["xy", "--x", lora_files[0], "--y", lora_files[1], "--prompt", "a face", "-o", "x.png"]):
        bad = CliRunner().invoke(main, [*command, "--width", "60"])
        assert bad.exit_code == 2 and "width and height are multiples of 8" in bad.output, command
