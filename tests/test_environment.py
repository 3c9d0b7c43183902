"""`loramix env` and the lock: what a bug report needs, and errors that name the dependency at fault."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from click.testing import CliRunner

from loramix.cli import main
from loramix.models.environment import (
    KEY_PACKAGES,
    Mismatch,
    compare_with_lock,
    dependency_error,
    find_lock,
    read_lock,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_lock_pins_every_key_package_and_the_source_checkout_finds_it():
    assert find_lock() == ROOT / "requirements" / "lock.txt"
    pins = read_lock(find_lock())
    assert set(KEY_PACKAGES) <= set(pins)
    assert all(version[0].isdigit() and "+" not in version for version in pins.values())  # no local build labels


def test_read_lock_takes_pins_by_canonical_name_and_skips_comments(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\n-e .\nHuggingface_Hub==2.4.0\nPillow==13.0.0  # why\n"
                    "torch==2.13.0 ; python_version >= '3.11'\n")
    assert read_lock(lock) == {"huggingface-hub": "2.4.0", "pillow": "13.0.0", "torch": "2.13.0"}


def test_compare_with_lock_ignores_local_labels_and_reports_differences_and_absences():
    pins = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"}
    installed = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": None}
    assert compare_with_lock(pins, installed) == [Mismatch("peft", None, "0.21.2"),
                                                   Mismatch("transformers", "5.24.0", "5.23.0")]


def test_env_prints_the_installed_versions_the_toy_base_and_the_lock():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for package in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"):
        assert f"{package} {importlib.metadata.version(package)}" in lines
    assert any(line.startswith("accelerators: cuda ") for line in lines)
    assert lines[-1].startswith(f"lock: {ROOT / 'requirements' / 'lock.txt'}: ")

    found = json.loads(CliRunner().invoke(main, ["env", "--json"]).output)
    assert (Path(found["toy_base"]) / "model_index.json").is_file()
    assert found["packages"]["peft"] == importlib.metadata.version("peft")
    key_pins = {package: version for package, version in read_lock(find_lock()).items()
                if package in found["packages"]}
    assert ([m for m in found["mismatches"] if m["package"] in key_pins]
            == [vars(m) for m in compare_with_lock(key_pins, found["packages"])])


def test_a_failure_inside_a_dependency_names_the_versions_and_the_way_out():
    error = dependency_error("adding LoRA layers to the base's text encoder",
                             ValueError("The version of PEFT you are using is not compatible\nmore detail"))
    message = str(error)
    assert "\n" not in message
    assert message.startswith("adding LoRA layers to the base's text encoder failed inside a dependency (")
    assert f"peft {importlib.metadata.version('peft')}" in message
    assert f"transformers {importlib.metadata.version('transformers')}" in message
    assert "The version of PEFT you are using is not compatible;" in message
    assert f"loramix is tested with torch {read_lock(find_lock())['torch']}" in message
