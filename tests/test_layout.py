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


# The layers, lowest first: a module imports only from layers below its own, or from its own package. The
# README draws this picture.
LAYERS = (
    ("errors", "choices"),
    ("util",),
    ("lora",),
    ("formats",),
    ("models",),
    ("jobs", "render", "toy"),
    ("train",),
    ("serve",),
    ("cli", "testing"),
    ("__main__",),
)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """The part of loramix a module belongs to: its package or top-level module (`loramix.lora.compose` → lora)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    """The module's layer; `loramix` itself (its version) is at the bottom."""
    if module == "loramix":
        return -1
    for number, rooms in enumerate(LAYERS):
        if room(module) in rooms:
            return number
    raise AssertionError(f"{module} is in no layer: add {room(module)!r} to LAYERS")


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module → the loramix modules it imports (lazily too), each resolved to a module that exists."""
    def existing(name: str) -> str:
        while name not in sources:
            name = name.rsplit(".", 1)[0]
        return name

    return {module: {existing(name) for name in imported_modules(ast.parse(text))} - {module}
            for module, text in sources.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} (layer {layer(module)}) imports {name} (layer {layer(name)})"
            for module, names in sorted(graph.items()) for name in sorted(names)
            if room(name) != room(module) and layer(name) >= layer(module)]


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a longer loop (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for name in graph.get(module, ()):
            if name not in index:
                visit(name)
                lowest[module] = min(lowest[module], lowest[name])
            elif name in stack:
                lowest[module] = min(lowest[module], index[name])
        if lowest[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def package_graph() -> dict[str, set[str]]:
    return import_graph({module_name(path): path.read_text(encoding="utf-8") for path in modules()})


def test_imports_run_down_the_layers():
    assert not layer_violations(package_graph())


def test_no_import_circles():
    assert not import_circles(package_graph())


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


def test_the_layer_and_circle_checks_catch_a_violation():
    """Code that breaks the rules, lazily: the maths reading a file, and two render modules importing each
    other, one of them inside a function."""
    sources = {
        "loramix": "",
        "loramix.lora.blocks": "def read(p):\n    from loramix.formats.read import read_adapter\n",
        "loramix.formats.read": "from loramix.lora.adapter import LoraAdapter\n",
        "loramix.lora.adapter": "import torch\n",
        "loramix.render.core": "def run():\n    from loramix.render.edit import edit_sequence\n",
        "loramix.render.edit": "from loramix.render.core import render\n",
    }
    graph = import_graph(sources)
    assert layer_violations(graph) == ["loramix.lora.blocks (layer 2) imports loramix.formats.read (layer 3)"]
    assert import_circles(graph) == [["loramix.render.core", "loramix.render.edit"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer():
    for path in modules():
        layer(module_name(path))


def test_the_checks_see_what_they_look_for(tmp_path):
    """The same checks on code that breaks the rules: they would fail."""
    bad = ast.parse('def f():\n    from loramix.toy.base import DEFAULT_STEPS\n    return {"ss_network_dim": 4}\n')
    assert "loramix.toy.base" in imported_modules(bad)
    strings = [n.value for n in ast.walk(bad) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any(KEY_NAME.search(s) for s in strings)
    for name in ("unet.x.lora_A.weight", "lora_te1_text_model", "loramix_trigger_words", "lora_adapter_metadata",
                 "lora_unet_down", "x.alpha"):
        assert KEY_NAME.search(name), name
