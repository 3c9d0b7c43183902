"""Step schedules for LoRA weights: the parser, and renders on the shipped toy base, fused (fp32) and unfused
(nf4), where a schedule's exact cases must equal the plain renders bit for bit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from loramix.cli import main
from loramix.errors import LoramixError
from loramix.lora.schedule import KEYFRAMES, RANGE, step_fraction
from loramix.lora.specs import WeightedFile, parse_weight_spec
from loramix.testing import assert_clean_error

STEPS = 6  # fractions 0, 0.2, 0.4, 0.6, 0.8, 1


# --- the parser -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, kind, keyframes", [
    ("a.safetensors:0.8@0.3-1.0", RANGE, ((0.3, 0.8), (1.0, 0.8))),
    ("a.safetensors:0@0,1@0.4,1@1", KEYFRAMES, ((0, 0), (0.4, 1), (1, 1))),
    ("a.safetensors:-0.5@0,0.5@1", KEYFRAMES, ((0, -0.5), (1, 0.5))),
    ("dir/a@v2.safetensors:1@0-0.5:lbw=INS", RANGE, ((0, 1), (0.5, 1))),  # '@' in a path; lbw combines
    ("a.safetensors:0.80@0.30-1.00", RANGE, ((0.3, 0.8), (1.0, 0.8))),  # written back as typed
])
def test_good_schedules_parse_and_round_trip_as_typed(spec, kind, keyframes):
    weighted = parse_weight_spec(spec)
    assert weighted.schedule.kind == kind and weighted.schedule.keyframes == keyframes
    assert weighted.spec == spec and parse_weight_spec(weighted.spec) == weighted
    assert weighted.weight == max((w for _, w in keyframes), key=abs)  # a scheduled file's one weight: its peak


@pytest.mark.parametrize("spec", ["a.safetensors:0.8@0.3-1#m.png", "a.safetensors:0@0,1@0.4,1@1:lbw=INS#dir/m.png"])
def test_a_schedule_and_a_region_parse_and_write_back_together(spec):
    weighted = parse_weight_spec(spec)
    assert weighted.schedule is not None and weighted.mask.endswith("m.png")
    assert weighted.spec == spec and parse_weight_spec(weighted.spec) == weighted


def test_weight_at_follows_loractl_interpolation_and_inclusive_ranges():
    ramp = parse_weight_spec("a:0@0,1@0.4,1@1").schedule
    assert [ramp.weight_at(step_fraction(i, STEPS)) for i in range(STEPS)] == [0, 0.5, 1, 1, 1, 1]
    late = parse_weight_spec("a:0.25@0.5,1@1").schedule  # held at its first weight before the first keyframe
    assert [late.weight_at(f) for f in (0, 0.5, 0.75, 1)] == [0.25, 0.25, 0.625, 1]
    flat = parse_weight_spec("a:0.8@0,0.8@1").schedule
    assert {flat.weight_at(step_fraction(i, 37)) for i in range(37)} == {0.8}  # exactly 0.8, no rounding
    part = parse_weight_spec("a:0.8@0.3-0.6").schedule
    # 11 steps: fractions 0, 0.1, …, 1; both ends of a range are inclusive, i/(n-1) lands on 0.3 exactly
    assert [part.weight_at(step_fraction(i, 11)) for i in range(11)] == [0, 0, 0, 0.8, 0.8, 0.8, 0.8, 0, 0, 0, 0]
    everything = parse_weight_spec("a:0.7@0-1").schedule
    assert all(everything.weight_at(step_fraction(i, n)) == 0.7 for n in (1, 2, 15) for i in range(n))


@pytest.mark.parametrize("spec, problem", [
    ("a.safetensors:@", "no weight before '@'"),
    ("a.safetensors:@x", "no weight before '@'"),
    ("a.safetensors:0.8@", "no fraction after '@'"),
    ("a.safetensors:0.8@x-1", "fraction 'x' is not a number"),
    ("a.safetensors:x@0-1", "weight 'x' is not a number"),
    ("a.safetensors:0.8@0.5-0.2", "range '0.5-0.2' must start before it ends"),
    ("a.safetensors:0.8@0.3-1.5", "fraction '1.5' is outside [0, 1]"),
    ("a.safetensors:0.8@-0.1-1", "is not START-END"),
    ("a.safetensors:1@1.2,0@2", "fraction '1.2' is outside [0, 1]"),
    ("a.safetensors:1@0.5,0@0.2", "keyframe fractions must increase, but 0.2 follows 0.5"),
    ("a.safetensors:0@0,1@0.5,1@0.5", "keyframe fractions must increase"),
    ("a.safetensors:0@0,,1@1", "an empty keyframe"),
    ("a.safetensors:0@0,1", "keyframe '1' is not WEIGHT@FRACTION"),
    ("a.safetensors:0.8@0.5", "gives one keyframe"),
    ("a.safetensors:inf@0-1", "must be a finite number"),
])
def test_bad_schedules_are_one_line_errors_naming_the_spec_and_the_problem(spec, problem):
    with pytest.raises(LoramixError) as error:
        parse_weight_spec(spec)
    message = str(error.value)
    assert message.startswith(f"weight spec {spec!r}: ") and problem in message and "\n" not in message


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789.,@-e+naif ", min_size=1, max_size=16).filter(lambda t: "@" in t))
def test_any_schedule_text_parses_and_round_trips_or_is_one_line_error(text):
    spec = f"a.safetensors:{text}"
    try:
        weighted = parse_weight_spec(spec)
    except LoramixError as error:
        assert str(error).startswith(f"weight spec {spec!r}: ") and "\n" not in str(error)
        return
    assert weighted.spec == spec and parse_weight_spec(weighted.spec) == weighted
    fractions = [f for f, _ in weighted.schedule.keyframes]
    assert fractions == sorted(set(fractions)) and all(0 <= f <= 1 for f in fractions)
    assert all(math.isfinite(weighted.schedule.weight_at(step_fraction(i, 7))) for i in range(7))


@settings(max_examples=200, deadline=None)
@given(fractions=st.lists(st.floats(0, 1), min_size=2, max_size=6, unique=True),
       weights=st.lists(st.floats(-4, 4), min_size=6, max_size=6))
def test_written_keyframes_parse_to_what_was_written_and_pass_through_their_weights(fractions, weights):
    keyframes = list(zip(sorted(fractions), weights))
    spec = "a.safetensors:" + ",".join(f"{w!r}@{f!r}" for f, w in keyframes)
    schedule = parse_weight_spec(spec).schedule
    assert schedule.keyframes == tuple(keyframes) and parse_weight_spec(spec).spec == spec
    assert [schedule.weight_at(f) for f, _ in keyframes] == [w for _, w in keyframes]


def test_a_bad_schedule_on_the_command_line_is_one_line_before_any_work(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--prompt", "a face", "--lora", "a.safetensors:0.8@0.5-0.2",
                                       "-o", str(tmp_path / "out")])
    assert_clean_error(result, "'a.safetensors:0.8@0.5-0.2'", "must start before it ends")
    assert not (tmp_path / "out").exists()


def test_writing_a_file_or_switching_methods_refuse_schedules(toy_loras, tmp_path):
    path = toy_loras(["a"])["a"]
    runner = CliRunner()
    result = runner.invoke(main, ["compose", f"{path}:0.8@0.3-1", "-o", str(tmp_path / "x.safetensors")])
    assert_clean_error(result, "a step schedule acts while rendering", f"{path}:0.8")
    assert not (tmp_path / "x.safetensors").exists()
    result = runner.invoke(main, ["compose", f"{path}:0@0,1@1", "--prompt", "a face", "--method", "switch"])
    assert_clean_error(result, "--method switch keeps each LoRA at one weight", "exact")
    result = runner.invoke(main, ["bake", "base.safetensors", f"{path}:0@0,1@1", "-o", str(tmp_path / "b")])
    assert_clean_error(result, "a step schedule acts while rendering")


# --- rendering ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A random LoRA strong enough that a few steps with it change the image."""
    from loramix.testing import write_toy_lora

    return str(write_toy_lora(tmp_path_factory.mktemp("loras") / "strong.safetensors", seed=3, scale=2.0))


def jobs(files: tuple[WeightedFile, ...], seeds=(0, 1)):
    from loramix.render.prompts import ImageJob

    return [ImageJob(f"{seed}.png", 0, "a smiling face", "", seed, STEPS, 4.0, 64, 64, files) for seed in seeds]


def rendered(pipeline, loras, specs: list[str], method: str = "exact") -> np.ndarray:
    from loramix.render.core import Composition
    from loramix.render.loop import render_jobs

    files = tuple(parse_weight_spec(spec) for spec in specs)
    images = [image for batch in render_jobs(pipeline, loras, jobs(files), Composition(method)) for image in
              batch.images]
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


@pytest.fixture(scope="module")
def fused(pipeline):
    from loramix.models.loras import PipelineLoras

    return PipelineLoras(pipeline)


def test_a_schedule_over_all_steps_renders_the_plain_weight_and_one_off_renders_the_base(pipeline, fused, lora):
    base = rendered(pipeline, fused, [])
    plain = rendered(pipeline, fused, [f"{lora}:0.8"])
    assert np.abs(plain - base).mean() > 2  # the LoRA changes the images
    assert (rendered(pipeline, fused, [f"{lora}:0.8@0-1"]) == plain).all()
    assert (rendered(pipeline, fused, [f"{lora}:0.8@0,0.8@1"]) == plain).all()
    assert (rendered(pipeline, fused, [f"{lora}:0@0,0@1"]) == base).all()
    assert (rendered(pipeline, fused, [f"{lora}:0@0-1"]) == base).all()
    assert (rendered(pipeline, fused, [f"{lora}:0"]) == base).all()  # weight 0, no schedule: the base too
    late = rendered(pipeline, fused, [f"{lora}:0.8@0.5-1"])
    assert np.abs(late - base).mean() > 1 and np.abs(late - plain).mean() > 1
    assert (rendered(pipeline, fused, []) == base).all()  # every switch was taken out again


def test_merging_methods_take_schedules_per_distinct_weight_vector(pipeline, fused, lora, toy_loras):
    other = toy_loras(["other"])["other"]
    plain = rendered(pipeline, fused, [f"{lora}:0.8", f"{other}:0.6"], method="ties")
    assert (rendered(pipeline, fused, [f"{lora}:0.8@0-1", f"{other}:0.6"], method="ties") == plain).all()
    late = rendered(pipeline, fused, [f"{lora}:0.8@0.5-1", f"{other}:0.6"], method="ties")
    assert np.abs(late - plain).mean() > 0.5


def read_at_each_step(pipeline, loras, scheduled: WeightedFile, read) -> tuple[list, object]:
    """Render one image with `scheduled` put on step by step, calling `read()` at every UNet call: the readings
    and the StepWeights that put the weights on."""
    from loramix.render.core import render
    from loramix.render.loop import settings_of
    from loramix.render.scheduled import StepWeights

    readings = []
    hook = pipeline.unet.register_forward_pre_hook(lambda unet, args: readings.append(read()))
    steps = StepWeights(loras, (scheduled,))
    try:
        steps.start()
        render(pipeline, [settings_of(jobs((scheduled,))[0])], on_step=steps)
    finally:
        hook.remove()
        loras.apply([])
    return readings, steps


def test_the_weights_on_the_fused_base_at_each_step_are_weight_at_that_step(pipeline, fused, lora):
    """Read the fused weight itself at every UNet call: W − W₀ = weight_at(i/(n−1))·ΔW."""
    from loramix.formats.read import read_adapter
    from loramix.lora.adapter import path_of
    from loramix.models.fuse import resolve_module

    key, module = next(iter(read_adapter(lora).modules.items()))
    layer = resolve_module(pipeline.unet, path_of(key))
    original, delta = layer.weight.detach().clone(), module.delta()
    scheduled = parse_weight_spec(f"{lora}:0@0,1@0.4,1@1")
    seen, steps = read_at_each_step(pipeline, fused, scheduled, lambda: layer.weight - original)
    expected = [scheduled.schedule.weight_at(step_fraction(i, STEPS)) for i in range(STEPS)]
    assert expected == [0, 0.5, 1, 1, 1, 1]
    assert [sum(wf.weight for wf in files) for files in steps.applied] == expected
    assert len(seen) == STEPS  # one UNet call a step (both halves of guidance in one batch)
    for weight, change in zip(expected, seen):
        torch.testing.assert_close(change, weight * delta, atol=1e-6, rtol=0)
    assert len(steps.switch_seconds) == 2  # re-fused only where the weight changed: steps 1 and 2
    assert torch.equal(layer.weight, original)


@pytest.fixture(scope="module")
def quantized():
    from loramix.models.load import load_pipeline
    from loramix.models.loras import PipelineLoras

    pipeline = load_pipeline("toy", quantize="nf4")
    return pipeline, PipelineLoras(pipeline)


@pytest.mark.slow  # quantizes a toy pipeline of its own to nf4 and renders it six times (about 3.5 s)
def test_on_an_nf4_base_adapter_weights_follow_the_schedule_per_step(quantized, lora):
    pipeline, loras = quantized
    assert not loras.fuse
    base = rendered(pipeline, loras, [])  # before any adapter is loaded
    plain = rendered(pipeline, loras, [f"{lora}:0.8"])
    assert np.abs(plain - base).mean() > 2
    assert (rendered(pipeline, loras, [f"{lora}:0.8@0-1"]) == plain).all()
    assert (rendered(pipeline, loras, [f"{lora}:0@0,0@1"]) == base).all()  # its adapter is loaded, and off
    assert (rendered(pipeline, loras, [f"{lora}:0"]) == base).all()
    late = rendered(pipeline, loras, [f"{lora}:0.8@0.5-1"])
    assert np.abs(late - base).mean() > 1 and np.abs(late - plain).mean() > 1

    # At each UNet call, the adapter's scaling in a peft layer is the step's weight (α/r is folded into B: 1).
    layer = next(m for m in pipeline.unet.modules() if hasattr(m, "scaling") and m.scaling)
    scheduled = parse_weight_spec(f"{lora}:0@0,1@0.4,1@1")
    seen, _ = read_at_each_step(pipeline, loras, scheduled, lambda: 0.0 if layer.disable_adapters else sum(
        layer.scaling[name] for name in layer.active_adapters))
    assert seen == [scheduled.schedule.weight_at(step_fraction(i, STEPS)) for i in range(STEPS)]


def test_generate_writes_the_schedule_as_typed_into_the_png_text_and_manifest(lora, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a face", "loras": f"{lora}:0@0,1@0.4,1@1", "seed": 5}) + "\n"
                       + json.dumps({"prompt": "a face", "loras": [{"path": lora, "weight": "0.8@0.3-1.0"}]}) + "\n")
    args = ["generate", "--prompts", str(prompts), "--steps", str(STEPS), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    first, second = sorted((tmp_path / "out").glob("*/*.png"))
    assert "a face <lora:strong:0@0,1@0.4,1@1>" in Image.open(first).text["parameters"]
    assert "a face <lora:strong:0.8@0.3-1.0>" in Image.open(second).text["parameters"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [row["loras"][0]["schedule"] for row in rows] == ["0@0,1@0.4,1@1", "0.8@0.3-1.0"]
    again = CliRunner().invoke(main, args)
    assert "(0 rendered, 2 kept)" in again.output  # the text matches, so a rerun keeps the images


def test_a_sequential_stage_runs_its_schedule_over_the_steps_it_denoises(pipeline, fused, lora):
    from loramix.render.edit import edit_sequence

    def stages(spec: str):
        return edit_sequence(pipeline, [parse_weight_spec(spec)], "a face", steps=8, guidance=4.0, strength=0.75,
                             adapters=fused)

    plain, everywhere = stages(f"{lora}:0.8"), stages(f"{lora}:0.8@0-1")
    assert (np.asarray(everywhere[-1].image) == np.asarray(plain[-1].image)).all()
    off, zero = stages(f"{lora}:0@0,0@1"), stages(f"{lora}:0")
    assert (np.asarray(off[-1].image) == np.asarray(zero[-1].image)).all()
    late = stages(f"{lora}:0.8@0.5-1")
    assert np.abs(np.asarray(late[-1].image, np.int16) - np.asarray(plain[-1].image, np.int16)).mean() > 0.5
    assert everywhere[-1].parameters("DPM++", "toy").startswith("a face <lora:strong:0.8@0-1>")
    assert everywhere[-1].label == "strong:0.8@0-1"
