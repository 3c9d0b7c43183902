"""Files cannot make loramix run code or write outside where it was asked to write.

- loramix never unpickles: its source has no unguarded `torch.load` or pickle import, and a pickle whose
  loading would create a marker file is refused by every command that reads files, the marker never appearing;
- output paths come from loramix, not from prompt-file rows or adapter metadata;
- metadata strings stay strings: written and read back as text, shown by `inspect` as text.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import loramix
from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.render.prompts import Defaults, plan, read_prompt_file
from loramix.testing import assert_clean_error

PACKAGE = Path(loramix.__file__).parent


def run(*args: str):
    return CliRunner().invoke(main, list(args))




def small_adapter(metadata: dict[str, str] | None = None) -> LoraAdapter:
    generator = torch.Generator().manual_seed(0)
    module = LoraModule(down=torch.randn(2, 8, generator=generator), up=torch.randn(8, 2, generator=generator),
                        alpha=2.0)
    return LoraAdapter({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": module},
                       dict(metadata or {}))


# ---- no unpickling ----

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def code_from_files(text: str, where: str) -> list[str]:
    """Each place in `text` that could run code from a file: torch.load without weights_only=True, a
    pickle-family import, allow_pickle=True, eval/exec, yaml.load without a Loader."""
    problems = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            problems += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            problems.append(f"{where}:{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}:{node.lineno}: {name}(…) without weights_only=True")
            allow = keywords.get("allow_pickle")
            if not (allow is None or isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{where}:{node.lineno}: {name}(…, allow_pickle=…)")
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                problems.append(f"{where}:{node.lineno}: {name}(…)")
            if name.endswith("yaml.load") and "Loader" not in keywords:
                problems.append(f"{where}:{node.lineno}: yaml.load without a Loader")
    return problems


def test_source_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = [p for path in files for p in code_from_files(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert problems == []


def test_the_source_scan_finds_what_it_looks_for():
    text = ("import pickle\nimport torch, numpy as np\nfrom dill import loads\nimport joblib.numpy_pickle\n"
            "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
            "np.load('x', allow_pickle=True)\nnp.load('x')\neval('1')\nmodel.eval()\n")
    found = code_from_files(text, "t.py")
    assert [p.split(":")[1] for p in found] == ["1", "3", "4", "5", "6", "8", "10"], found


class RunsCode:
    """Unpickling this creates `marker`: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


@pytest.fixture
def evil_files(tmp_path, marker) -> dict[str, Path]:
    """Checkpoints that run code when unpickled, under every name a user might give them."""
    payload = {"state_dict": {"x": torch.zeros(1)}, "evil": RunsCode(marker)}
    files = {}
    for name in ("evil.ckpt", "evil.pt", "evil.pth", "evil.safetensors", "evil-zip.safetensors"):
        files[name] = tmp_path / name
        torch.save(payload, files[name], _use_new_zipfile_serialization=name != "evil.safetensors")
    for name, protocol in (("evil.bin", 2), ("evil.pkl", 4), ("evil-raw.safetensors", 5)):
        files[name] = tmp_path / name
        files[name].write_bytes(pickle.dumps(payload, protocol=protocol))
    # The payload is live: loading it the unsafe way does create the marker.
    pickle.loads(files["evil.bin"].read_bytes())
    assert marker.exists()
    marker.unlink()
    return files


def test_inspect_and_compose_refuse_pickles(tmp_path, marker, evil_files):
    for name, path in evil_files.items():
        assert_clean_error(run("inspect", str(path)), name)
        assert_clean_error(run("compose", str(path), "-o", str(tmp_path / "out.safetensors")), name, "pickle")
        assert not marker.exists(), name
    assert not (tmp_path / "out.safetensors").exists()


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("a red square")
    return folder


@pytest.mark.parametrize("name", ["evil.ckpt", "evil.bin", "evil.pt", "evil.safetensors", "evil-raw.safetensors"])
def test_train_refuses_a_pickled_base(tmp_path, marker, evil_files, tiny_dataset, name):
    result = run("train", "--dataset", str(tiny_dataset), "--base", str(evil_files[name]), "--steps", "1",
                 "--output", str(tmp_path / "run"))
    assert_clean_error(result, name)
    assert not marker.exists()


def test_train_refuses_a_pipeline_folder_whose_weights_are_pickles(tmp_path, marker, evil_files, tiny_dataset):
    """A diffusers folder with a pickled UNet (`diffusion_pytorch_model.bin`) does not run its code."""
    import shutil

    folder = tmp_path / "base"
    shutil.copytree(PACKAGE / "weights" / "toy", folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copy(evil_files["evil.ckpt"], folder / "unet" / "diffusion_pytorch_model.bin")
    result = run("train", "--dataset", str(tiny_dataset), "--base", str(folder), "--steps", "1",
                 "--output", str(tmp_path / "run"))
    assert_clean_error(result, "diffusion_pytorch_model.bin")  # diffusers loads .bin with weights_only=True
    assert not marker.exists()


# ---- output paths stay in the output folder ----

PATHLIKE = st.one_of(st.text(max_size=60), st.sampled_from([
    "../../evil", "..", "/etc/passwd", "~/x", "a/../../b", "C:\\x", "\\\\server\\share", "\x00", ".", "-",
    "../" * 50, "CON", "a" * 500]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(PATHLIKE, min_size=1, max_size=4), flat=st.booleans())
def test_planned_paths_stay_inside_the_output_folder(tmp_path, prompts, flat):
    """Whatever a prompt-file row says, every image it plans is a plain relative path below the output."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "seed": 1}) for p in prompts))
    rows = read_prompt_file(path).rows
    if flat:
        rows = rows[:1]
    if not rows:
        return
    output = (tmp_path / "out").resolve()
    for job in plan(rows, Defaults(steps=2, guidance=1.0, width=64, height=64), flat=flat):
        parts = Path(job.path).parts
        assert not Path(job.path).is_absolute() and ".." not in parts and "." not in parts, job.path
        assert all(re.fullmatch(r"[a-z0-9.-]+", part) for part in parts), job.path
        assert (output / job.path).resolve().is_relative_to(output)


def test_metadata_is_never_an_output_path(tmp_path, monkeypatch):
    """Names in metadata (kohya's ss_output_name, the base model) are not used to place files."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    escape = {"ss_output_name": "../../escaped", "loramix_base_model": "../../base", "name": "/tmp/x",
              "output": "../../out", "loramix_trigger_words": "../../t"}
    source = work / "in.safetensors"
    write_adapter(small_adapter(escape), source)
    before = sorted(tmp_path.rglob("*"))
    assert run("compose", str(source), "-o", "composed.safetensors").exit_code == 0
    assert run("inspect", str(source)).exit_code == 0
    assert sorted(tmp_path.rglob("*")) == sorted([*before, work / "composed.safetensors"])
    assert read_adapter(work / "composed.safetensors").metadata is not None


# ---- metadata is text ----

HOSTILE_METADATA = {
    "json_object": json.dumps({"__class__": "os.system", "args": ["touch pwned"], "py/object": "os.system"}),
    "html": "<script>alert('x')</script><img src=x onerror=alert(1)>",
    "lines": "one\ntwo\r\nthree",
    "yaml": "!!python/object/apply:os.system ['touch pwned']",
    "template": "{__import__('os').system('touch pwned')} ${HOME} $(touch pwned) `touch pwned`",
    "nul": "a\x00b",
    "unicode": "ü \u202e snowman ☃ \U0001f600",
    "huge": "x" * 100_000,
}


def test_metadata_round_trips_as_plain_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "meta.safetensors"
    write_adapter(small_adapter(HOSTILE_METADATA), path)
    metadata = read_adapter(path).metadata
    for key, value in HOSTILE_METADATA.items():
        assert type(metadata[key]) is str and metadata[key] == value, key
    again = tmp_path / "again.safetensors"
    write_adapter(read_adapter(path), again, format="kohya")
    assert {k: read_adapter(again).metadata[k] for k in HOSTILE_METADATA} == HOSTILE_METADATA
    assert not (tmp_path / "pwned").exists()


def test_inspect_shows_metadata_as_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "meta.safetensors"
    write_adapter(small_adapter(HOSTILE_METADATA), path)
    result = run("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert f"json_object: {HOSTILE_METADATA['json_object']}" in result.output
    assert f"html: {HOSTILE_METADATA['html']}" in result.output
    assert "lines: one two" in result.output  # a value stays on its line
    assert f"template: {HOSTILE_METADATA['template']}" in result.output
    shown = json.loads(run("inspect", "--json", str(path)).output)[0]["metadata"]
    assert {k: shown[k] for k in HOSTILE_METADATA} == HOSTILE_METADATA
    assert not (tmp_path / "pwned").exists()


def test_inspect_does_not_send_terminal_controls_from_metadata(tmp_path):
    path = tmp_path / "meta.safetensors"
    write_adapter(small_adapter({"title": "\x1b]0;owned\x07\x1b[2J\rfake line"}), path)
    result = run("inspect", str(path))
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\r" not in result.output


def test_commands_reading_hostile_metadata_leave_nothing_in_the_working_folder(tmp_path, monkeypatch):
    """Every command that reads or writes metadata, run where a `touch pwned` in it would land: the working
    folder ends with the files asked for and nothing else."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # The payload is live: a shell that expands the metadata does create the marker.
    subprocess.run(["sh", "-c", 'echo "' + HOSTILE_METADATA["template"] + '"'], check=True, capture_output=True)
    assert (work / "pwned").exists()
    (work / "pwned").unlink()

    source = tmp_path / "meta.safetensors"
    write_adapter(small_adapter(HOSTILE_METADATA), source)
    for args in (["inspect", str(source)], ["inspect", "--json", str(source)],
                 ["compose", str(source), "-o", "composed.safetensors"],
                 ["compose", str(source), "--format", "kohya", "-o", "composed.kohya.safetensors"],
                 ["inspect", "composed.safetensors", "composed.kohya.safetensors"]):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
    write_adapter(read_adapter(work / "composed.kohya.safetensors"), work / "again.safetensors")
    assert sorted(p.name for p in work.iterdir()) == ["again.safetensors", "composed.kohya.safetensors",
                                                      "composed.safetensors"]
    assert not Path(os.getcwd(), "pwned").exists()
