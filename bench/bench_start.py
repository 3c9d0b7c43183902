"""A `loramix` command's start: the console script's collector settings against Python's defaults.

    python bench/bench_start.py [--rounds 5]

Each round runs the same small command twice, each in a fresh process, one after the other: `python -m loramix`
(the console script's `run()`, which makes the collector's full passes rarer) and the same `run()` with that
step left out, on Python's default thresholds. The command renders one toy image in 2 steps, so its time is
mostly start-up: imports and loading the toy base. Prints each round, the means and their ratio. Run it alone:
another torch process on a 2-core machine changes both figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["generate", "--prompt", "a face", "-n", "1", "--steps", "2"]
# The console script as it is, but for its collector thresholds.
DEFAULTS = ("import sys, loramix.cli as cli; cli.rare_full_collections = lambda: None; "
            "sys.argv = ['loramix', *sys.argv[1:]]; cli.run()")


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"run()": [], "defaults": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):  # a fresh output folder each time: nothing is kept from a run before
            out = [str(Path(scratch) / f"{round_}-{way}") for way in times]
            times["run()"].append(timed([sys.executable, "-m", "loramix", *COMMAND, "-o", out[0]]))
            times["defaults"].append(timed([sys.executable, "-c", DEFAULTS, *COMMAND, "-o", out[1]]))
            print(f"round {round_}: run() {times['run()'][-1]:.2f} s, defaults {times['defaults'][-1]:.2f} s")
    ours, theirs = (statistics.mean(times[way]) for way in ("run()", "defaults"))
    print(f"`loramix {' '.join(COMMAND)}` in a fresh process: {ours:.2f} s against {theirs:.2f} s on Python's "
          f"default collector thresholds, ×{ours / theirs:.2f}")


if __name__ == "__main__":
    main()
