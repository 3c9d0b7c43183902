"""Kill tests: the real CLI in a real process, SIGKILLed at seeded random points, then run again.

The runs that are killed, and the runs that finish after them, are forked from a server that has already
imported torch and the libraries (tests/forked_cli.py): a fresh interpreter spends five seconds on imports before
its work, and there are some thirty runs. Each test's reference run is a fresh `python -m loramix`, and the
forked runs must end where it does.

What must hold whatever the moment of the kill:
- training resumed with `--resume` ends with the adapter of a run that was never stopped, and redoes at most
  one checkpoint interval;
- `generate` started again renders each missing image once, keeps every image already written, and leaves no
  truncated PNG and a manifest that lists each image once;
- `compose -o` over an existing file leaves the old file or the complete new one, never a part.

Each planned kill must land: a run that finishes before its kill is undone (its folder put back as it was)
and killed again at an earlier moment, so no seed can pass without killing anything.

A killed writer may leave its hidden temporary file (`.NAME.PID.HEX.tmp`, `.step-N.partial`): SIGKILL gives
it no chance to clean up. The tests check such leftovers are hidden and that later runs ignore them (a later
write of the same file removes atomic.py's, tests/test_atomic.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from forked_cli import ForkedCli
from PIL import Image
from safetensors.torch import load_file

from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.testing import random_adapter

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same float sums in every process
SEEDS = [0, 1, 2]
TIMEOUT = 240

pytestmark = pytest.mark.slow


def loramix(*args) -> list[str]:
    """The arguments of a `loramix` command."""
    return list(map(str, args))


def run(command: list[str]) -> subprocess.CompletedProcess:
    """`loramix COMMAND` in a fresh interpreter: the reference runs."""
    done = subprocess.run([sys.executable, "-m", "loramix", *command], capture_output=True, text=True, env=ENV,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def forked(tmp_path_factory) -> ForkedCli:
    return ForkedCli(tmp_path_factory.mktemp("forked"))


def run_forked(forked: ForkedCli, command: list[str]) -> str:
    """`command` (a `loramix(...)` list) forked, to its end; its stdout."""
    process = forked.start(command)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr[-2000:]
    return stdout


def kill_when(forked: ForkedCli, command: list[str], ready, delay: float) -> int:
    """Start `command` (forked), wait until `ready()` (polled every 5 ms), then `delay` seconds, then SIGKILL it.
    Returns its exit status: -SIGKILL, or 0 when it finished first."""
    process = forked.start(command)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready() and process.poll() is None:
            assert time.monotonic() < deadline, "the process never reached the kill point"
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode in (0, -signal.SIGKILL), stderr[-2000:]
    return process.returncode


def kill_landing(forked: ForkedCli, command: list[str], folder: Path, moments, saved: Path) -> int:
    """Kill `command` at the first of `moments` (`(ready, delay)` pairs for kill_when, each earlier than the
    one before) that comes before the run finishes, and return that moment's index. A run that finishes
    first is undone: `folder` is put back as it was (kept meanwhile in `saved`) before the next moment is
    tried. Fails when even the earliest comes too late."""
    if folder.exists():
        shutil.copytree(folder, saved, symlinks=True)
    try:
        for index, (ready, delay) in enumerate(moments):
            if kill_when(forked, command, ready, delay) == -signal.SIGKILL:
                return index
            shutil.rmtree(folder, ignore_errors=True)
            if saved.exists():
                shutil.copytree(saved, folder, symlinks=True)
        pytest.fail(f"the run finished before each of {len(moments)} kills, even the earliest")
    finally:
        shutil.rmtree(saved, ignore_errors=True)


def visible(folder: Path) -> set[str]:
    """Files under `folder` that a user (or a later run) would take for outputs: not hidden, not in a hidden
    folder."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def hidden_leftovers(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob(".*")}


def is_temporary(name: str) -> bool:
    """A killed writer's hidden leftover: atomic.py's `.NAME.PID.HEX.tmp`, a checkpoint's `.step-N.partial`
    folder, or the `.tmpXXXXXX` that safetensors' `save_file` itself writes and renames onto its target."""
    *folders, base = name.split("/")
    return (base.startswith(".") and base.endswith(".tmp")) or base.startswith(".tmp") or (
        base.startswith(".step-") and base.endswith(".partial")) or any(f.endswith(".partial") for f in folders)


def written_by_atomic_path(name: str) -> str | None:
    """The file an atomic.py leftover `.NAME.PID.HEX.tmp` was to become, or None for other leftovers."""
    match = re.fullmatch(r"(.*/)?\.(.+)\.\d+\.[0-9a-f]{8}\.tmp", name)
    return None if match is None else (match.group(1) or "") + match.group(2)


def assert_whole_png(path: Path) -> None:
    with Image.open(path) as image:
        image.load()  # decodes every row: a truncated file raises here


# --- training -------------------------------------------------------------------------------------------------

STEPS, EVERY = 40, 4


def train_command(dataset: Path, run_folder: Path, *extra) -> list[str]:
    return loramix("train", "--dataset", dataset, "--steps", STEPS, "--batch-size", 2, "--rank", 2,
                   "--checkpoint-every", EVERY, "--keep-checkpoints", 2, "--sample-every", 16, "--sample-steps", 2,
                   "--output", run_folder, "--name", "m", *extra)


def log_rows(run_folder: Path) -> list[dict]:
    log = run_folder / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def logged_step(run_folder: Path) -> int:
    try:
        lines = (run_folder / "train_log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):  # read in the middle of an append
        return 0


def checkpoint_steps(run_folder: Path) -> list[int]:
    folder = run_folder / "checkpoints"
    return sorted(int(p.name.removeprefix("step-")) for p in folder.glob("step-*")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mustache_faces) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(train_command(mustache_faces, folder))
    return folder


@pytest.mark.parametrize("seed", SEEDS)
def test_training_killed_and_resumed_ends_with_the_uninterrupted_adapter(uninterrupted, mustache_faces, forked,
                                                                           tmp_path, seed):
    """Seed s kills the run 1 + s % 2 times, each a random moment (0-150 ms, about two steps) after a random step
    is logged: in a step, in a checkpoint or sample write, or in the final writes. The first kill comes after
    the first checkpoint, so there is one to resume from."""
    rng = random.Random(seed)
    folder = tmp_path / "run"
    resume: list[str] = []
    kept: list[tuple[int, list[dict]]] = []  # (checkpoint resumed from, the log as the kill left it)
    for _ in range(1 + seed % 2):
        low = max(EVERY + 1, logged_step(folder) + 1)  # step EVERY + 1 is logged after checkpoint EVERY is written
        if low > STEPS:
            break
        target = rng.randint(low, STEPS)
        logged = [lambda step=step: logged_step(folder) >= step for step in (target, low)]
        # The seeded moment, then the same step at once, then the first step this run can be killed after.
        moment = kill_landing(forked, train_command(mustache_faces, folder, *resume), folder,
                              [(logged[0], rng.uniform(0, 0.15)), (logged[0], 0.0), (logged[1], 0.0)],
                              tmp_path / "before")
        rows, latest = log_rows(folder), checkpoint_steps(folder)[-1]
        assert rows[-1]["step"] - latest <= EVERY, (rows[-1], latest)  # at most one interval of work lost
        print(f"killed (moment {moment}) after step {rows[-1]['step']} was logged; resuming from checkpoint {latest}")
        kept.append((latest, rows))
        resume = ["--resume"]
    run_forked(forked, train_command(mustache_faces, folder, *resume))

    rows, reference_rows = log_rows(folder), log_rows(uninterrupted)
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))  # every step logged once
    for latest, before in kept:
        assert rows[:latest] == before[:latest]  # the resumed run began after the checkpoint: those steps stand
    assert np.allclose([r["loss"] for r in rows], [r["loss"] for r in reference_rows], rtol=1e-5, atol=1e-7)
    ours, reference = load_file(str(folder / "m.safetensors")), load_file(str(uninterrupted / "m.safetensors"))
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(ours[key], reference[key], rtol=1e-5, atol=1e-7), key
    assert checkpoint_steps(folder) == [STEPS - EVERY, STEPS]
    assert visible(folder) == visible(uninterrupted)
    for png in folder.rglob("*.png"):
        assert_whole_png(png)
    assert all(map(is_temporary, hidden_leftovers(folder))), hidden_leftovers(folder)


# --- generate -------------------------------------------------------------------------------------------------

PER_PROMPT = 24


@pytest.fixture(scope="module")
def prompt_file(toy_loras) -> Path:
    """Three rows, one with a LoRA, so a restart also lands between LoRA sets."""
    folder = Path(toy_loras(["red"])["red"]).parent
    rows = [{"prompt": "a face"}, {"prompt": "a face", "loras": "red.safetensors:0.8", "seed": 100},
            {"prompt": "a smiling face", "seed": 200}]
    path = folder / "p.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def generate_command(prompts: Path, output: Path) -> list[str]:
    return loramix("generate", "--prompts", prompts, "-n", PER_PROMPT, "--steps", 4, "--batch-size", 4,
                   "-o", output)


def pngs(output: Path) -> set[str]:
    return {name for name in visible(output) if name.endswith(".png") and name != "grid.png"}


@pytest.fixture(scope="module")
def generated(prompt_file, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("generated") / "out"
    run(generate_command(prompt_file, output))
    return output


@pytest.mark.parametrize("seed", SEEDS)
def test_generate_killed_and_restarted_renders_each_image_once(prompt_file, generated, forked, tmp_path, seed):
    """Seed s kills the run 1 + s % 2 times, each a random moment (0-150 ms, about a batch) after a random
    number of PNGs exist; the last count is the whole plan, so the kill can land in the manifest or grid write."""
    rng = random.Random(seed)
    output = tmp_path / "out"
    expected = pngs(generated)
    assert len(expected) == 3 * PER_PROMPT
    for _ in range(1 + seed % 2):
        low = len(pngs(output)) + 1 if output.exists() else 1
        if low > len(expected):
            break
        target = rng.randint(low, len(expected))
        written = [lambda count=count: output.exists() and len(pngs(output)) >= count for count in (target, low)]
        # The seeded moment, then the same count at once, then the first image this run writes.
        moment = kill_landing(forked, generate_command(prompt_file, output), output,
                              [(written[0], rng.uniform(0, 0.15)), (written[0], 0.0), (written[1], 0.0)],
                              tmp_path / "before")
        assert pngs(output) <= expected
        assert visible(output) - pngs(output) <= {"manifest.jsonl", "grid.png"}
        for name in visible(output):
            if name.endswith(".png"):
                assert_whole_png(output / name)
        print(f"killed (moment {moment}) with {len(pngs(output))} of {len(expected)} images written")
    before = {name: (output / name).stat() for name in pngs(output)} if output.exists() else {}
    leftovers = hidden_leftovers(output) if output.exists() else set()
    stdout = run_forked(forked, generate_command(prompt_file, output))
    assert (f"wrote {len(expected)} images and manifest.jsonl and grid.png to {output} "
            f"({len(expected) - len(before)} rendered, {len(before)} kept)") in stdout

    assert pngs(output) == expected and visible(output) == visible(generated)
    for name, stat in before.items():  # kept, not rendered again
        after = (output / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    for name in visible(output):
        if name.endswith(".png"):
            assert_whole_png(output / name)
    for name in expected:
        with Image.open(output / name) as ours, Image.open(generated / name) as theirs:
            assert ours.info["parameters"] == theirs.info["parameters"]
            difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max()
            assert difference <= 2, name  # batches differ after a restart; the image must not
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["path"] for row in rows) == sorted(expected)  # each image once
    assert all(map(is_temporary, leftovers)), leftovers  # a killed run leaves only hidden temporaries...
    remaining = hidden_leftovers(output)
    assert remaining <= leftovers  # ...the restart adds none...
    # ...and writing a file again removes what its killed writers left of it
    assert not [name for name in remaining if written_by_atomic_path(name) in visible(output)], remaining


# --- compose -o -----------------------------------------------------------------------------------------------

COMPOSE_KILLS = 4


def digest(path: Path) -> str:
    """What the file holds: its metadata and tensors. Not its bytes: safetensors writes the metadata in a
    different order in every process."""
    from safetensors import safe_open

    content = hashlib.sha256()
    with safe_open(str(path), "pt") as file:
        content.update(json.dumps(file.metadata(), sort_keys=True).encode())
        for key in sorted(file.keys()):
            content.update(key.encode() + file.get_tensor(key).numpy().tobytes())
    return content.hexdigest()


@pytest.fixture(scope="module")
def big_adapters(tmp_path_factory, forked) -> dict:
    """Two rank-16 LoRAs over SD 1.5's 184 linear UNet modules, so the composition (rank 32, 55 MB) takes tens of
    milliseconds to write; the old output is `a` itself, the new one what an uninterrupted fresh run writes, and
    `seconds` how long a forked run, as the killed ones are, takes (which writes the same)."""
    from loramix.models.shapes import load_base_shapes

    folder = tmp_path_factory.mktemp("big")
    shapes = {k: v for k, v in load_base_shapes("sd15").weight_shapes.items() if k.startswith("unet.") and len(v) == 2}
    for seed, name in enumerate("ab"):
        write_adapter(random_adapter(shapes, 16, 16.0, seed), folder / f"{name}.safetensors")
    run(compose_command(folder, folder / "new.safetensors"))
    started = time.monotonic()
    run_forked(forked, compose_command(folder, folder / "forked.safetensors"))
    seconds = time.monotonic() - started
    assert digest(folder / "forked.safetensors") == digest(folder / "new.safetensors")
    (folder / "forked.safetensors").unlink()
    return {"folder": folder, "old": digest(folder / "a.safetensors"), "new": digest(folder / "new.safetensors"),
            "seconds": seconds}


def compose_command(folder: Path, output: Path) -> list[str]:
    return loramix("compose", folder / "a.safetensors:0.7", folder / "b.safetensors:0.5", "-o", output)


@pytest.mark.parametrize("seed", SEEDS)
def test_compose_killed_while_overwriting_leaves_the_old_file_or_the_new_one(big_adapters, forked, tmp_path, seed):
    """Kill i of 4: i % 4 == 0 the moment the temporary file appears; i % 4 == 2 a random 0-60 ms later (in
    the write or just after the rename); odd i a random moment between 30% and 110% of a whole run."""
    rng = random.Random(seed)
    folder, output = big_adapters["folder"], tmp_path / "out.safetensors"
    shutil.copy(folder / "a.safetensors", output)
    landed = False
    for i in range(COMPOSE_KILLS):
        before = hidden_leftovers(tmp_path)
        if i % 2:
            ready, delay = (lambda: True), rng.uniform(0.3, 1.1) * big_adapters["seconds"]
        else:
            ready = lambda known=before: bool(hidden_leftovers(tmp_path) - known)  # noqa: E731
            delay = 0.0 if i % 4 == 0 else rng.uniform(0, 0.06)
        kill_when(forked, compose_command(folder, output), ready, delay)
        landed |= any(written_by_atomic_path(name) == output.name for name in hidden_leftovers(tmp_path) - before)
        assert digest(output) in (big_adapters["old"], big_adapters["new"]), f"kill {i}: a partial file"
        assert read_adapter(output).modules
        if digest(output) == big_adapters["new"]:
            shutil.copy(folder / "a.safetensors", output)  # the old file again, for the next kill
    leftovers = hidden_leftovers(tmp_path)
    assert landed  # a kill did land in the write
    assert all(map(is_temporary, leftovers)), leftovers
    run_forked(forked, compose_command(folder, output))
    assert digest(output) == big_adapters["new"]
    remaining = hidden_leftovers(tmp_path)
    assert visible(tmp_path) == {"out.safetensors"} and remaining <= leftovers
    assert not [name for name in remaining if written_by_atomic_path(name) == output.name], remaining
