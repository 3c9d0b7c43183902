"""What a bug report needs: the versions loramix runs with, where it runs, and how they compare with the lock.

The lock (`requirements/lock.txt` in a source checkout) pins every package to the version the test suite
passed with. A failure inside a dependency is reported with those versions beside the installed ones, because
most such failures are two releases that do not fit together, not a fault of the user's input.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loramix import __version__
from loramix.errors import DependencyError, first_line

# The packages whose versions decide whether loramix works, in the order a report lists them.
KEY_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors",
                "huggingface-hub", "tokenizers", "numpy", "pillow", "click")


@dataclass
class Mismatch:
    package: str
    installed: str | None  # None: not installed
    locked: str


@dataclass
class Environment:
    loramix: str
    python: str
    platform: str
    packages: dict[str, str | None]  # None: not installed
    accelerators: dict[str, str]
    toy_base: str
    lock: str | None  # the lock file found beside the source, if any
    mismatches: list[Mismatch] = field(default_factory=list)


def canonical_name(name: str) -> str:
    """A distribution name as PEP 503 compares them: `Pillow`, `huggingface_hub` → `pillow`, `huggingface-hub`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def public_version(version: str) -> str:
    """The version without its local label: the CPU build `2.13.0+cpu` is release 2.13.0."""
    return version.split("+", 1)[0]


def find_lock() -> Path | None:
    """`requirements/lock.txt` beside the package's source, as in a checkout; a wheel install has none."""
    path = Path(__file__).resolve().parents[2] / "requirements" / "lock.txt"
    return path if path.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of a pip constraints file, by canonical name; comments and options skipped."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[canonical_name(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def compare_with_lock(pins: dict[str, str], installed: dict[str, str | None]) -> list[Mismatch]:
    """Every locked package whose installed release differs from its pin (local labels aside) or is absent."""
    mismatches = []
    for package, locked in sorted(pins.items()):
        have = installed.get(package)
        if have is None or public_version(have) != public_version(locked):
            mismatches.append(Mismatch(package, have, locked))
    return mismatches


def accelerators() -> dict[str, str]:
    import torch

    found = {"cuda": "no", "mps": "no"}
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        found["cuda"] = f"yes, {torch.cuda.device_count()} × {', '.join(names)} (CUDA {torch.version.cuda})"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found["mps"] = "yes"
    return found


def describe() -> Environment:
    from loramix.models.load import bundled_base_path

    lock = find_lock()
    pins = read_lock(lock) if lock else {}
    names = list(KEY_PACKAGES) + sorted(set(pins) - set(KEY_PACKAGES))
    installed = {name: installed_version(name) for name in names}
    return Environment(
        loramix=__version__,
        python=f"{platform.python_version()} ({platform.python_implementation()}) at {sys.executable}",
        platform=platform.platform(),
        packages={name: installed[name] for name in KEY_PACKAGES},
        accelerators=accelerators(),
        toy_base=str(bundled_base_path()),
        lock=str(lock) if lock else None,
        mismatches=compare_with_lock(pins, installed),
    )


def dependency_error(action: str, error: Exception,
                     packages: tuple[str, ...] = ("torch", "diffusers", "transformers", "peft")) -> DependencyError:
    """A one-line error for a failure inside a dependency: what failed, the versions in play, and the way out."""
    installed = ", ".join(f"{name} {installed_version(name) or 'not installed'}" for name in packages)
    lock = find_lock()
    pins = read_lock(lock) if lock else {}
    tested = ", ".join(f"{name} {pins[name]}" for name in packages if name in pins)
    remedy = (f"loramix is tested with {tested}: install those (`pip install -c requirements/lock.txt -e .`)"
              if tested else "install the versions in loramix's requirements/lock.txt")
    return DependencyError(f"{action} failed inside a dependency ({installed}): {first_line(error)}; {remedy}")
