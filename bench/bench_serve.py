"""From a slider's release to the new preview on screen in `loramix serve`, against the render alone.

    python bench/bench_serve.py [--loras build/loras] [--moves 50] [--images 4] [--screenshot docs/serve.png]

Serves the toy base (with its judge) as `loramix serve` does: the web server on a thread, the render worker on
the main thread, which loaded the pipeline (see loramix.serve.worker for why); the page opens in Debian's
headless chromium, driven from a third thread. Two LoRAs are switched on; then `moves` times the second one's slider is
set to a new weight and released, and the time from that event to the new images decoded and on screen is
read from the page (`window.loramixTimings`), and the bench waits for it inside the page: polling through the
driver would load the CPU while the server renders. After each move the same render is timed alone, in this
process, on the same pipeline and thread, through the same render loop (`render_jobs`: fusing the set and the
pipeline calls), so the page's own overhead (parameters text, PNGs, the judge, JSON, HTTP, decoding) is the
difference.
Goal: median ≤ 0.5 s for 4 images, overhead ≤ 20% of the render.

Mixes the first two LoRA files of --loras (by name; e.g. lipstick and mustache trained by `make demo` and copied
there), else two random toy LoRAs (the time does not depend on what a LoRA learned).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a face with a mustache and lipstick"


def lora_folder(folder: Path, scratch: Path) -> tuple[Path, list[str]]:
    """The two LoRAs to mix: the first two files of `folder` by name, else two random ones in `scratch`."""
    names = sorted(path.name for path in folder.glob("*.safetensors")) if folder.is_dir() else []
    if len(names) >= 2:
        return folder, names[:2]
    names = ["mustache.safetensors", "lipstick.safetensors"]
    from loramix.testing import write_toy_lora

    for seed, name in enumerate(names):
        write_toy_lora(scratch / name, seed=seed, scale=8)
    return scratch, names


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "loras")
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--screenshot", type=Path, help="Also save a screenshot of the page here.")
    args = parser.parse_args()

    import torch

    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.serve_cmd import toy_judge
    from loramix.lora.specs import WeightedFile
    from loramix.models.load import load_base
    from loramix.render.core import EXACT
    from loramix.render.loop import render_jobs
    from loramix.render.prompts import Defaults, PromptRow, plan
    from loramix.serve.app import create_app
    from loramix.serve.library import LoraLibrary
    from loramix.serve.studio import Studio
    from loramix.serve.worker import RenderWorker
    from loramix.testing import serve_in_thread

    quiet_libraries()
    with tempfile.TemporaryDirectory() as scratch:
        folder, names = lora_folder(args.loras, Path(scratch))
        library = LoraLibrary([folder])
        listed = [next(n for n in library.names() if n.endswith("/" + name)) for name in names]
        loaded = load_base("toy")
        judge, attributes = toy_judge()
        studio = Studio(loaded, "toy", library, judge)
        worker = RenderWorker()
        url, stop = serve_in_thread(create_app(studio, worker, attributes))
        # The same renders alone, on the same pipeline, on the worker's thread (which owns the pipeline),
        # each right after its move so that both see the same load on a shared CPU.
        steps, guidance, size = loaded.steps, loaded.guidance, loaded.size

        def render_alone(weight: float) -> float:
            files = (WeightedFile(str(folder / names[0]), 0.7), WeightedFile(str(folder / names[1]), weight))
            defaults = Defaults(steps=steps, guidance=guidance, width=size, height=size, n=args.images, seed=0,
                                loras=files)
            jobs = plan([PromptRow(line=0, prompt=PROMPT)], defaults, flat=True)
            began = time.perf_counter()
            for _ in render_jobs(loaded.pipeline, studio.loras, jobs, EXACT, batch_size=len(jobs)):
                pass
            return time.perf_counter() - began

        measured: dict = {}

        def drive() -> None:
            try:
                measured["timings"], measured["alone"] = _drive(url, listed, args, worker, render_alone)
            except BaseException as e:  # shown by the main thread
                measured["error"] = e

        driving = threading.Thread(target=drive, name="browser")
        driving.start()
        worker.run(while_alive=driving.is_alive)
        driving.join()
        stop()
        worker.stop()
        if "error" in measured:
            raise measured["error"]
        timings, alone = measured["timings"], measured["alone"]

    total = [t["total_s"] for t in timings]
    server = [t["server_s"] for t in timings]
    render = [t["render_s"] for t in timings]
    median_total, median_alone = statistics.median(total), statistics.median(alone)
    print(f"{args.moves} slider moves, {args.images} toy images each ({steps} steps), torch threads "
          f"{torch.get_num_threads()}:")
    print(f"  slider release → preview on screen   median {median_total:.3f} s   p95 {percentile(total, 0.95):.3f} s"
          "   (goal: median ≤ 0.5 s)")
    print(f"  render alone (render_jobs)           median {median_alone:.3f} s   p95 {percentile(alone, 0.95):.3f} s")
    print(f"  in the server: render loop           median {statistics.median(render):.3f} s;"
          f" whole preview (PNGs, parameters, judge) {statistics.median(server):.3f} s")
    overhead = median_total - median_alone
    print(f"  the page's overhead                  {overhead * 1000:.0f} ms = {overhead / median_alone:.1%} of the "
          "render alone   (goal: ≤ 20%)")
    same = statistics.median([t["total_s"] - t["render_s"] for t in timings])
    print(f"  the same, per request: on screen − its own render loop   median {same * 1000:.0f} ms = "
          f"{same / statistics.median(render):.1%} of the render loop")


def _drive(url: str, listed: list[str], args, worker, render_alone) -> tuple[list[dict], list[float]]:
    """Switch both LoRAs on, warm up, then time `args.moves` slider moves, each followed by its render alone."""
    from loramix.testing import headless_chromium

    driver = headless_chromium(height=1900)
    try:
        driver.get(url)
        shown = lambda: driver.execute_script("return window.loramixShown")  # noqa: E731
        wait = lambda condition: _wait(driver, condition)  # noqa: E731
        wait(lambda: shown() >= 1)
        driver.execute_script(f"""
            document.getElementById('prompt').value = {PROMPT!r};
            document.getElementById('count').value = {args.images};""")
        for name in listed:
            before = shown()
            driver.execute_script(f"""
                const card = document.querySelector('.lora[data-name="{name}"]');
                card.querySelector('.weight-number').value = 0.7;
                card.querySelector('.weight-number').dispatchEvent(new Event('change'));
                card.querySelector('.toggle').click();""")
            wait(lambda before=before: shown() > before)
        for _ in range(3):  # warm-up moves, not counted
            _move(driver, listed[1], 0.5, wait, shown)
        start = len(driver.execute_script("return window.loramixTimings"))
        weights = [round(-1 + 3 * (i + 0.5) / args.moves, 2) for i in range(args.moves)]
        alone = []
        for weight in weights:
            _move(driver, listed[1], weight, wait, shown)
            alone.append(worker.call(lambda weight=weight: render_alone(weight)))
        timings = driver.execute_script("return window.loramixTimings")[start:]
        if args.screenshot:
            _screenshot(driver, listed, wait, shown, args.screenshot)
        return timings, alone
    finally:
        driver.quit()


def _move(driver, name: str, weight: float, wait, shown) -> None:
    """Set the slider and release it, as a drag ends (the page renders on the input event), and wait inside the
    page for the new preview: polling from here, through the driver, would load the CPU the render runs on."""
    driver.set_script_timeout(120)
    driver.execute_async_script(f"""
        const done = arguments[arguments.length - 1], target = window.loramixShown + 1;
        const slider = document.querySelector('.lora[data-name="{name}"] .weight');
        slider.value = {weight};
        slider.dispatchEvent(new Event('input'));
        slider.dispatchEvent(new Event('change'));
        const check = () => window.loramixShown >= target ? done() : setTimeout(check, 5);
        check();""")


def _screenshot(driver, listed: list[str], wait, shown, path: Path) -> None:
    """The page as a user leaves it: both LoRAs at 0.7, a 5×5 XY grid of their weights."""
    from selenium.webdriver.common.by import By

    _move(driver, listed[1], 0.7, wait, shown)
    driver.execute_script("document.getElementById('xy-xw').value = '0:1:0.25';"
                          "document.getElementById('xy-yw').value = '0:1:0.25';")
    driver.find_element(By.ID, "xy").click()
    wait(lambda: "cells" in driver.find_element(By.ID, "xy-status").text)
    import base64

    width, height = driver.execute_script("return [document.body.scrollWidth, document.body.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {  # the whole page, not only the window
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {path}")


def _wait(driver, condition, timeout: float = 120) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda _: condition())


if __name__ == "__main__":
    main()
