"""`loramix generate` over prompt files: parsing, seeds, resuming, PNG settings, manifest, LoRA rows, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.formats.metadata import short_hash
from loramix.formats.write import write_adapter
from loramix.lora.specs import WeightedFile
from loramix.models.load import LoadedBase, load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import render
from loramix.render.generate import MANIFEST, generate, render_order, settings_of
from loramix.render.prompts import Defaults, ImageJob, plan, read_prompt_file, slug
from loramix.testing import random_adapter

STEPS = ["--steps", "4"]
DEFAULTS = Defaults(steps=4, guidance=4.0, width=64, height=64, n=1, seed=0)


@pytest.fixture(scope="module")
def loras(pipeline):
    return PipelineLoras(pipeline)


@pytest.fixture(scope="module")
def lora_dir(toy_loras, toy_attention_shapes) -> Path:
    """`red` and `blue` fit the toy base; `other-base` does not. Prompt files are written next to them."""
    folder = Path(toy_loras(["red", "blue"])["red"]).parent
    key = next(k for k in toy_attention_shapes if k.endswith("attn2.to_k"))
    wrong = {key: (toy_attention_shapes[key][0], 32)}  # cross-attention over 32-wide text: another base's
    write_adapter(random_adapter(wrong, 4, 4.0, 2), folder / "other-base.safetensors")
    return folder


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_prompt_files_of_three_kinds_give_the_same_rows(lora_dir, tmp_path):
    write(lora_dir / "p.txt", "# faces\na face\n\n  a smiling face  \n")
    write(lora_dir / "p.jsonl", '{"prompt": "a face"}\n'
          '{"prompt": "a smiling face", "seed": 7, "loras": ["red.safetensors:0.5", {"path": "blue.safetensors"}],'
          ' "n": 2, "steps": 3, "guidance": 2.5, "width": 72, "negative_prompt": "blur"}\n')
    write(lora_dir / "p.csv", 'prompt,seed,loras,n,steps,guidance,width,negative_prompt\n"a face",,,,,,,\n'
          '"a smiling face",7,red.safetensors:0.5 blue.safetensors,2,3,2.5,72,blur\n')
    txt, jsonl, csv = (read_prompt_file(lora_dir / f"p.{kind}") for kind in ("txt", "jsonl", "csv"))
    assert [(r.line, r.prompt) for r in txt.rows] == [(2, "a face"), (4, "a smiling face")]
    assert [replace(r, line=0) for r in jsonl.rows] == [replace(r, line=0) for r in csv.rows]
    assert [r.line for r in csv.rows] == [2, 3] and not jsonl.problems and not csv.problems
    row = csv.rows[1]
    assert row.loras == (WeightedFile(str(lora_dir / "red.safetensors"), 0.5),
                         WeightedFile(str(lora_dir / "blue.safetensors"), 1.0))  # read from the file's folder
    jobs = plan(csv.rows, DEFAULTS)
    assert [job.path for job in jobs] == ["002-a-face/000-0.png", "003-a-smiling-face/000-7.png",
                                          "003-a-smiling-face/001-8.png"]
    assert (jobs[2].seed, jobs[2].steps, jobs[2].guidance, jobs[2].width, jobs[2].height) == (8, 3, 2.5, 72, 64)


def test_bad_rows_are_reported_by_line(lora_dir):
    text = ('{"prompt": "fine"}\n{"prompt": "x", "sed": 3}\nnot json\n{"prompt": "y", "loras": ":0.7"}\n'
            '{"prompt": "z", "loras": "missing.safetensors"}\n{"prompt": "w", "width": 60}\n{"prompt": ""}\n')
    read = read_prompt_file(write(lora_dir / "bad.jsonl", text))
    assert [r.prompt for r in read.rows] == ["fine"]
    messages = [str(p).removeprefix(f"{lora_dir / 'bad.jsonl'}:") for p in read.problems]
    assert messages == [
        "2: unknown field 'sed' (did you mean 'seed'?)",
        "3: not JSON (Expecting value at column 1)",
        "4: weight spec ':0.7': no file before ':'",
        f"5: LoRA missing.safetensors: no such file ({lora_dir / 'missing.safetensors'})",
        "6: width 60 is not a multiple of 8 (the VAE halves the image 3 times)",
        "7: no prompt",
    ]
    csv = read_prompt_file(write(lora_dir / "bad.csv", "prompt,steps\nok,2\nbad,two\nshort\n"))
    assert [str(p).rsplit(":", 2)[1:] for p in csv.problems] == [["3", " steps 'two' is not a whole number"],
                                                               ["4", " 1 cells where the header names 2 columns"]]


def test_slugs_keep_every_path_inside_the_output():
    assert slug("../../etc/passwd") == "etc-passwd"
    assert slug("/abs  PATH\\..\\x") == "abs-path-x"
    assert slug("…") == "prompt"
    assert len(slug("word " * 40)) <= 40


def test_a_bad_row_is_skipped_with_a_warning_and_strict_stops_before_rendering(lora_dir, tmp_path):
    prompts = write(tmp_path / "p.txt", "a face\n")
    bad = write(tmp_path / "p.jsonl", '{"prompt": "a face"}\n{"prompt": "a face", "steps": 0}\n')
    result = CliRunner().invoke(main, ["generate", "--prompts", str(bad), *STEPS, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"Warning: {bad}:2: steps 0 is out of range (1 to 1000) (row skipped)" in result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "001-a-face/000-0.png", "grid.png"]
    strict = CliRunner().invoke(main, ["generate", "--prompts", str(bad), "--strict", "-o", str(tmp_path / "s")])
    assert strict.exit_code == 1
    assert strict.output.strip() == f"Error: {bad}:2: steps 0 is out of range (1 to 1000)"
    assert not (tmp_path / "s").exists()
    both = CliRunner().invoke(main, ["generate", "--prompts", str(prompts), "--prompt", "x", "-o", str(tmp_path)])
    assert both.exit_code == 2 and "give --prompt or --prompts" in both.output


@pytest.mark.slow  # generates a run of six images, renders one alone, then resumes the run (about 2.1 s)
def test_an_image_is_the_same_alone_in_a_batch_and_in_a_resumed_run(pipeline, loras, tmp_path):
    jobs = plan(read_prompt_file(write(tmp_path / "p.txt", "a face\na smiling face\n")).rows,
                Defaults(steps=4, guidance=4.0, width=64, height=64, n=3, seed=11))
    first = generate(LoadedBase.of(pipeline, "toy"), jobs, tmp_path / "a", batch_size=4, loras=loras)
    assert (first.rendered, first.kept) == (6, 0)
    alone = render(pipeline, [settings_of(jobs[4])])[0]
    assert np.abs(np.asarray(alone, dtype=np.int16) - pixels(tmp_path / "a" / jobs[4].path)).max() <= 2
    (tmp_path / "a" / jobs[4].path).unlink()
    (tmp_path / "a" / jobs[1].path).write_bytes(b"half a png")  # an interrupted write of another tool
    resumed = generate(LoadedBase.of(pipeline, "toy"), jobs, tmp_path / "a", batch_size=4, loras=loras)
    assert (resumed.rendered, resumed.kept) == (2, 4)
    fresh = generate(LoadedBase.of(pipeline, "toy"), jobs, tmp_path / "b", batch_size=1, loras=loras)
    for job in jobs:
        assert np.abs(pixels(tmp_path / "a" / job.path) - pixels(tmp_path / "b" / job.path)).max() <= 2, job.path
    rows = [json.loads(line) for line in (tmp_path / "a" / MANIFEST).read_text().splitlines()]
    assert [row["path"] for row in rows] == [job.path for job in jobs]  # whole again after the resume
    assert all(row["seconds"] > 0 for row in rows) and fresh.rendered == 6
    changed = [ImageJob(**{**job.__dict__, "steps": 3}) if job.line == 2 else job for job in jobs]
    again = generate(LoadedBase.of(pipeline, "toy"), changed, tmp_path / "a", batch_size=4, loras=loras, grid=False)
    assert (again.rendered, again.kept) == (3, 3)  # the settings changed: its PNGs are out of date


def test_pngs_carry_a1111_parameters_and_the_manifest_lists_every_image(lora_dir, tmp_path):
    red = lora_dir / "red.safetensors"
    prompts = write(tmp_path / "p.jsonl", json.dumps({"prompt": "a face", "seed": 5, "negative_prompt": "blur",
                                                      "loras": f"{red}:0.5", "guidance": 3}) + "\n")
    result = CliRunner().invoke(main, ["generate", "--prompts", str(prompts), *STEPS, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "wrote 1 images and manifest.jsonl and grid.png" in result.output
    with Image.open(tmp_path / "out" / "001-a-face" / "000-5.png") as image:
        text = image.info["parameters"]
    assert text == ("a face <lora:red:0.5>\nNegative prompt: blur\nSteps: 4, Sampler: DPMSolverMultistepScheduler, "
                    f'CFG scale: 3, Seed: 5, Size: 64x64, Model: toy, Lora hashes: "red: {short_hash(red)}", '
                    "Generator: loramix")
    (row,) = [json.loads(line) for line in (tmp_path / "out" / MANIFEST).read_text().splitlines()]
    assert {k: v for k, v in row.items() if k != "seconds"} == {
        "path": "001-a-face/000-5.png", "line": 1, "prompt": "a face", "negative_prompt": "blur", "seed": 5,
        "steps": 4, "guidance": 3.0, "width": 64, "height": 64, "sampler": "DPMSolverMultistepScheduler",
        "model": "toy", "loras": [{"path": str(red), "name": "red", "weight": 0.5, "hash": short_hash(red)}]}


def test_rows_switch_lora_sets_and_the_base_comes_back_exactly(pipeline, loras, lora_dir, tmp_path):
    red, blue = (str(lora_dir / f"{name}.safetensors") for name in ("red", "blue"))
    rows = read_prompt_file(write(tmp_path / "p.jsonl", "".join(json.dumps(row) + "\n" for row in [
        {"prompt": "a face"}, {"prompt": "a face", "loras": f"{red}:1"}, {"prompt": "a face", "loras": f"{blue}"},
        {"prompt": "a face", "loras": f"{red}:1"}]))).rows
    jobs = plan(rows, DEFAULTS)
    assert [job.line for job in render_order(jobs)] == [1, 2, 4, 3]  # each set's images together
    result = generate(LoadedBase.of(pipeline, "toy"), jobs, tmp_path / "out", batch_size=1, loras=loras)
    assert len(result.switch_seconds) == 2  # red, then blue; the end restores the base
    base, with_red, with_blue, red_again = (pixels(tmp_path / "out" / job.path) for job in jobs)
    assert np.abs(base - with_red).max() > 10 and np.abs(with_red - with_blue).max() > 10
    assert np.array_equal(with_red, red_again)
    base_after = generate(LoadedBase.of(pipeline, "toy"), plan(rows[:1], DEFAULTS), tmp_path / "again", loras=loras)
    assert base_after.rendered == 1
    assert np.array_equal(pixels(tmp_path / "again" / jobs[0].path), base)
    fresh = render(load_pipeline("toy"), [settings_of(jobs[0])])[0]
    assert np.array_equal(np.asarray(fresh, dtype=np.int16), base)


@pytest.mark.parametrize("args, message", [
    (["--lora", "{dir}/other-base.safetensors:0.5"],
     r"^Error: \S+other-base.safetensors: module unet\.\S+attn2\.to_k changes a weight of shape \(\d+, 32\), "
     r"this base's is \(\d+, \d+\); the LoRA was made for another base$"),
    (["--lora", ":0.7"], r"^Error: weight spec ':0.7': no file before ':'$"),
    (["--lora", "{dir}/nowhere.safetensors"], r"^Error: LoRA \S+nowhere.safetensors: no such file"),
    (["--width", "60"], r"^Error: Invalid value for .?--width/--height.?: width and height are multiples of 8$"),
])
def test_bad_input_is_one_line_and_writes_nothing(lora_dir, tmp_path, args, message):
    import re

    args = [arg.replace("{dir}", str(lora_dir)) for arg in args]
    result = CliRunner().invoke(main, ["generate", "--prompt", "a face", "-n", "2", *STEPS, *args,
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code in (1, 2)
    assert re.search(message, result.output.strip().splitlines()[-1]), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_render_each_image_once(tmp_path):
    """`accelerate launch` with 2 CPU processes: every image of the plan exists once, the manifest lists each
    once, and the processes' counts add up to the plan (an image rendered twice would count twice)."""
    prompts = write(tmp_path / "p.txt", "a face\na smiling face\na face with glasses\n")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loramix",
               "generate", "--prompts", str(prompts), "-n", "2", "--steps", "2", "--batch-size", "2",
               "-o", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # only the main process reports
    assert "wrote 6 images and manifest.jsonl and grid.png" in done.stdout
    assert "(6 rendered, 0 kept) by 2 processes" in done.stdout
    expected = {f"{line:03d}-{slug(p)}/{k:03d}-{k}.png" for line, p in
                enumerate(["a face", "a smiling face", "a face with glasses"], start=1) for k in range(2)}
    found = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")} - {"grid.png"}
    assert found == expected
    rows = [json.loads(line) for line in (tmp_path / "out" / MANIFEST).read_text().splitlines()]
    assert sorted(row["path"] for row in rows) == sorted(expected)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no parts or temp files left
