"""The package's shape, checked from its syntax trees: which way the imports run, and where key names live."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "loramix"
# Names of LoRA-file keys and header metadata: kohya's and peft's factor names, kohya's prefixes, loramix's
# and kohya's metadata keys, diffusers' LoraConfig block.
KEY_NAME = re.compile(r"lora_(A|B|down|up)\b|lora_(unet|te\d?)_|\bloramix_[a-z]|\bss_[a-z]|\bsshs_|"
                      r"lora_adapter_metadata|\.alpha\b")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    """Every loramix module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "loramix"}


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_only_the_command_line_imports_the_toy_package():
    offenders = []
    for path in modules():
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("cli", "toy"):
            continue
        imports = imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        offenders += [f"{path.relative_to(PACKAGE)} imports {name}" for name in sorted(imports)
                      if name == "loramix.toy" or name.startswith("loramix.toy.")]
    assert not offenders, offenders


def test_no_command_imports_another():
    for path in (PACKAGE / "cli").glob("*_cmd.py"):
        imports = imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        others = [name for name in imports if re.fullmatch(r"loramix\.cli\.\w+_cmd(\.\w+)?", name)]
        assert not others, f"{path.name} imports {others}"


def test_key_and_metadata_names_are_spelled_in_formats_alone():
    offenders = []
    for path in modules():
        if path.relative_to(PACKAGE).parts[0] == "formats":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if KEY_NAME.search(node.value):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, offenders


def test_the_checks_see_what_they_look_for(tmp_path):
    """The same checks on code that breaks the rules: they would fail."""
    bad = ast.parse('def f():\n    from loramix.toy.base import DEFAULT_STEPS\n    return {"ss_network_dim": 4}\n')
    assert "loramix.toy.base" in imported_modules(bad)
    strings = [n.value for n in ast.walk(bad) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any(KEY_NAME.search(s) for s in strings)
    for name in ("unet.x.lora_A.weight", "lora_te1_text_model", "loramix_trigger_words", "lora_adapter_metadata",
                 "lora_unet_down", "x.alpha"):
        assert KEY_NAME.search(name), name
