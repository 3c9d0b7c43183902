"""`<lora:NAME:WEIGHT>` tags in prompts: found in the LoRA folders, taken out of the text the encoder sees, added
to the LoRAs given by name, and every bad tag a one-line error naming the tag and its prompt."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile, parse_weight_spec
from loramix.render.prompt_tags import add_weights, find_lora_tags, split_lora_tags
from loramix.render.prompts import Defaults, PromptRow, plan, with_prompt_tags
from loramix.testing import assert_clean_error, write_toy_lora


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "loras" / "styles").mkdir(parents=True)
    for name in ("mustache", "lipstick", "styles/ink"):
        (tmp_path / "loras" / f"{name}.safetensors").write_bytes(b"")
    return tmp_path / "loras"


def test_tags_leave_the_text_and_name_files_and_weights(folder):
    text, loras = split_lora_tags("a face <lora:mustache:0.8>, with  lipstick <LORA:lipstick> <lora:styles/ink:0.5>",
                                  [folder])
    assert text == "a face , with lipstick"
    assert [(lora.path, lora.weight) for lora in loras] == [
        (str(folder / "mustache.safetensors"), 0.8), (str(folder / "lipstick.safetensors"), 1.0),
        (str(folder / "styles" / "ink.safetensors"), 0.5)]


def test_a_tag_takes_what_a_weight_spec_takes_after_its_colon(folder):
    _, (scheduled, blocks) = split_lora_tags("<lora:mustache:0@0,1@1> a face <lora:lipstick:0.7:lbw=INS>", [folder])
    assert scheduled.schedule is not None and scheduled.schedule.text == "0@0,1@1"
    assert (blocks.weight, blocks.lbw) == (0.7, "INS")


def test_a_name_is_found_in_subfolders_and_in_the_first_folder_that_has_it(folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "ink.safetensors").write_bytes(b"")
    _, (ink,) = split_lora_tags("<lora:ink:1> x", [folder, other])
    assert ink.path == str(folder / "styles" / "ink.safetensors")
    _, (ink,) = split_lora_tags("<lora:ink:1> x", [other, folder])
    assert ink.path == str(other / "ink.safetensors")


def test_two_files_of_one_name_in_a_folder_are_an_error_naming_both(folder):
    (folder / "more").mkdir()
    (folder / "more" / "ink.safetensors").write_bytes(b"")
    with pytest.raises(LoramixError, match=r"--prompt: the tag '<lora:ink:1>' could be .*more/ink.safetensors or "
                                           r".*styles/ink.safetensors: write the subfolder too"):
        split_lora_tags("x <lora:ink:1>", [folder])


@pytest.mark.parametrize("prompt, message", [
    ("a face <lora:beard:0.5>", "--prompt: the tag '<lora:beard:0.5>' names no LoRA file: no beard.safetensors in"),
    ("a face <lora:mustache:strong>", "--prompt: the tag '<lora:mustache:strong>': weight 'strong' is not a number"),
    ("a face <lora:mustache:0.5", "--prompt: the tag '<lora:mustache:0.5' is not closed with '>'"),
    ("a face <lora::0.5>", "--prompt: the tag '<lora::0.5>' names no LoRA"),
    ("a face <lora:mustache:nan>", "--prompt: the tag '<lora:mustache:nan>': weight 'nan' must be a finite number"),
])
def test_bad_tags_are_one_line_errors_naming_the_tag_and_the_prompt(folder, prompt, message):
    with pytest.raises(LoramixError) as caught:
        split_lora_tags(prompt, [folder])
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_find_reads_no_file():
    assert find_lora_tags("<lora:a/b:2> c") == ("c", (find_lora_tags("d <lora:a/b:2>")[1][0],))
    assert find_lora_tags("<lora:a/b:2> c")[1][0].name == "a/b"
    assert find_lora_tags("<lora:x> c")[1][0].weight == "1"


def test_a_tag_and_a_lora_naming_one_file_add_their_weights(folder):
    mustache = str(folder / "mustache.safetensors")
    given = (WeightedFile(mustache, 0.5), WeightedFile(str(folder / "lipstick.safetensors"), 0.25))
    _, tagged = split_lora_tags("<lora:mustache:0.3> <lora:styles/ink:1> <lora:mustache:0.2> x", [folder])
    merged = add_weights(given, tagged)
    assert [(lora.path, round(lora.weight, 6)) for lora in merged] == [
        (mustache, 1.0), (str(folder / "lipstick.safetensors"), 0.25), (str(folder / "styles" / "ink.safetensors"), 1)]
    scheduled = (parse_weight_spec(f"{mustache}:0@0,1@1"),)
    with pytest.raises(LoramixError, match="is named twice and one of them has a schedule"):
        add_weights(scheduled, tagged)


def test_rows_with_tags_plan_their_loras_beside_the_defaults(folder):
    default = WeightedFile(str(folder / "mustache.safetensors"), 0.5)
    rows = with_prompt_tags([PromptRow(1, "a face <lora:mustache:0.25>"), PromptRow(2, "a face"),
                             PromptRow(3, "<lora:lipstick:1> a face", loras=())], [folder], "prompts.txt")
    jobs = plan(rows, Defaults(steps=5, guidance=4.0, width=64, height=64, loras=(default,)))
    assert [job.prompt for job in jobs] == ["a face"] * 3
    assert [[(lora.name, lora.weight) for lora in job.loras] for job in jobs] == [
        [("mustache", 0.75)], [("mustache", 0.5)], [("lipstick", 1.0)]]
    with pytest.raises(LoramixError, match=r"^prompts.txt:7: the tag '<lora:beard>' names no LoRA file"):
        with_prompt_tags([PromptRow(7, "a face <lora:beard>")], [folder], "prompts.txt")
    with pytest.raises(LoramixError, match="--prompt: the prompt is only <lora:…> tags"):
        with_prompt_tags([PromptRow(0, "<lora:mustache>")], [folder])


@pytest.mark.slow  # renders on the toy base
def test_generate_with_a_tag_renders_what_the_lora_option_renders(tmp_path, monkeypatch):
    """The same image, the same PNG text (A1111's, the tag at the end) and the same manifest row."""
    (tmp_path / "loras").mkdir()
    write_toy_lora(tmp_path / "loras" / "ink.safetensors", seed=3, scale=4.0)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    common = ["generate", "-n", "1", "--steps", "4", "--no-grid"]
    tagged = runner.invoke(main, [*common, "--prompt", "a face <lora:ink:0.8>", "--loras", "loras", "-o", "tag"])
    given = runner.invoke(main, [*common, "--prompt", "a face", "--lora", "loras/ink.safetensors:0.8", "-o", "opt"])
    plain = runner.invoke(main, [*common, "--prompt", "a face", "-o", "plain"])
    assert tagged.exit_code == given.exit_code == plain.exit_code == 0, tagged.output + given.output
    images = {name: Image.open(tmp_path / name / "00000-0.png") for name in ("tag", "opt", "plain")}
    assert images["tag"].tobytes() == images["opt"].tobytes() != images["plain"].tobytes()
    assert images["tag"].text["parameters"].splitlines()[0] == "a face <lora:ink:0.8>"
    assert images["tag"].text == images["opt"].text
    rows = [json.loads((tmp_path / name / "manifest.jsonl").read_text()) for name in ("tag", "opt")]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in rows][0] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in rows][1]


def test_a_bad_tag_in_a_prompt_file_stops_generate_before_the_base_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.csv").write_text("prompt,seed\na face,1\n\"a face <lora:beard:2>\",2\n")
    result = CliRunner().invoke(main, ["generate", "--prompts", "prompts.csv", "--base", "no/such/base", "-o", "out"])
    assert_clean_error(result, "prompts.csv:3: the tag '<lora:beard:2>' names no LoRA file")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["compose", "x.safetensors:1", "--prompt", "a <lora:x:1", "--base", "nope"])
    assert_clean_error(result, "--prompt: the tag '<lora:x:1' is not closed")
