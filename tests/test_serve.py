"""`loramix serve`: names resolved inside the served folders, the one render worker, and the real server in its
own process under bad files, replaced files, two tabs, a closed tab and 300 slider moves.

The server tests start `loramix serve` once for the module on 127.0.0.1 and a free port, and talk to it over
HTTP as a page does; nothing leaves this machine.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from PIL import Image

from loramix.choices import RENDER_METHODS
from loramix.errors import LoramixError, RequestError
from loramix.formats.metadata import META_TRIGGER
from loramix.lora.specs import WeightedFile
from loramix.serve.library import LoraLibrary
from loramix.serve.mix import MixRequest, command_lines
from loramix.serve.worker import RenderWorker, Superseded
from loramix.testing import assert_clean_error, safetensors_parts, start_server, stop_server, write_toy_lora

# --- names: only files inside the served folders -------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "loras"
    (folder / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.safetensors"
    for path in (folder / "a.safetensors", folder / "sub" / "b.safetensors", outside):
        path.write_bytes(b"x")
    (folder / "notes.txt").write_text("not a LoRA")
    (folder / "out.safetensors").symlink_to(outside)
    (folder / "in.safetensors").symlink_to(folder / "a.safetensors")
    return folder


def test_listed_names_are_the_files_inside(served):
    library = LoraLibrary([served])
    assert library.names() == ["loras/a.safetensors", "loras/in.safetensors", "loras/sub/b.safetensors"]
    assert library.resolve("loras/sub/b.safetensors") == served / "sub" / "b.safetensors"
    assert library.resolve("loras/in.safetensors") == served / "a.safetensors"  # a link that stays inside


@pytest.mark.parametrize("name, status", [
    ("../../etc/passwd", 403), ("loras/../../etc/passwd", 403), ("loras/../outside.safetensors", 403),
    ("/etc/passwd", 403), ("loras/out.safetensors", 403), ("loras/notes.txt", 403),
    ("loras/missing.safetensors", 404), ("elsewhere/a.safetensors", 404), ("", 400), (7, 400), ("a\x00b", 400),
])
def test_names_outside_the_folders_are_refused_and_logged(served, caplog, name, status):
    library = LoraLibrary([served])
    with caplog.at_level(logging.WARNING, logger="loramix.serve"):
        with pytest.raises(RequestError) as refused:
            library.resolve(name)
    assert refused.value.status == status
    assert any("refused LoRA name" in record.message for record in caplog.records)


def test_the_current_folder_serves_bare_names(served, monkeypatch):
    monkeypatch.chdir(served)
    library = LoraLibrary(["."])
    assert "a.safetensors" in library.names()
    assert library.command_path("sub/b.safetensors") == "sub/b.safetensors"
    with pytest.raises(RequestError):
        library.resolve("../outside.safetensors")


# --- the worker: one task at a time, the newest of a tab's waiting ones ----------------------------------------


def test_a_newer_request_of_a_tab_supersedes_its_waiting_one():
    worker = RenderWorker().start()
    gate, ran = threading.Event(), []
    try:
        running = worker.submit(("tab1", "preview"), lambda: gate.wait(10) and ran.append("first"))
        time.sleep(0.1)  # the first task has started and holds the worker
        older = worker.submit(("tab1", "preview"), lambda: ran.append("older"))
        other_tab = worker.submit(("tab2", "preview"), lambda: ran.append("tab2"))
        newer = worker.submit(("tab1", "preview"), lambda: ran.append("newer"))
        with pytest.raises(Superseded):
            older.result(5)
        gate.set()
        running.result(5), other_tab.result(5), newer.result(5)
        assert ran == ["first", "tab2", "newer"]  # oldest waiting first; the superseded one never ran
        assert worker.stats.superseded == 1 and worker.stats.most_waiting == 2
    finally:
        gate.set()
        worker.stop()


def test_a_dropped_task_never_runs_and_a_failing_one_does_not_stop_the_worker():
    worker = RenderWorker().start()
    gate, ran = threading.Event(), []
    try:
        worker.submit(("t", "a"), lambda: gate.wait(10))
        time.sleep(0.1)
        gone = worker.submit(("t", "b"), lambda: ran.append("gone"))
        worker.drop(("t", "b"), gone)
        failing = worker.submit(("t", "c"), lambda: 1 / 0)
        gate.set()
        with pytest.raises(ZeroDivisionError):
            failing.result(5)
        assert worker.submit(("t", "d"), lambda: "still serving").result(5) == "still serving"
        assert ran == [] and gone.cancelled()
    finally:
        gate.set()
        worker.stop()


def test_a_ctrl_c_between_taking_a_task_and_running_it_still_answers_its_caller_on_stop():
    """The server's main thread takes a task from the queue and is interrupted before running it: stop must
    fail that task's future, or its caller (a web thread) waits forever and the process never exits."""
    from loramix.serve.worker import WorkerStopped

    worker = RenderWorker()
    taken = worker.submit(("t", "a"), lambda: "never runs")
    waiting = worker.submit(("t", "b"), lambda: "never runs either")

    original = worker._waiting.popitem

    def pop_then_interrupt(last=True):  # the Ctrl-C lands right after the task left the queue
        item = original(last=last)
        item[1][1].set_running_or_notify_cancel()
        raise KeyboardInterrupt

    worker._waiting.popitem = pop_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    worker.stop()
    for future in (taken, waiting):
        with pytest.raises(WorkerStopped):
            future.result(1)


def test_a_ctrl_c_while_a_result_is_handed_over_ends_the_loop_as_a_ctrl_c():
    """The server renders on its main thread, where Ctrl-C lands: arriving while a finished task's caller is
    woken (its future's callbacks run), it must stop the loop as a KeyboardInterrupt, which serve turns into a
    clean exit, and the caller keeps its result."""
    worker = RenderWorker()
    future = worker.submit(("tab", "preview"), lambda: "rendered")

    def interrupted(_):
        raise KeyboardInterrupt

    future.add_done_callback(interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    assert future.result(0) == "rendered" and worker.stats.done == 1


# --- requests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ({"loras": [{"name": "a", "weight": float("nan")}]}, "weight: a finite number"),
    ({"loras": [{"name": "a", "weight": 0.5, "extra": 1}]}, "'name' and a 'weight'"),
    ({"count": 9}, "count: a whole number from 1 to 8"),
    ({"method": "tie"}, "did you mean 'ties'"),
    ({"promt": "x"}, "did you mean 'prompt'"),
    ({"steps": "15; rm -rf /"}, "steps: a whole number"),
    ({"loras": [{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]}, "listed twice"),
    ([1, 2], "a JSON object"),
])
def test_bad_requests_are_one_line_errors(body, message):
    with pytest.raises(LoramixError, match=message.replace("(", r"\(")):
        MixRequest.from_json(body)


def test_command_lines_quote_what_the_client_typed():
    request = MixRequest.from_json({"prompt": "a face; echo 'owned'", "method": "sequential", "seed": 3})
    lines = command_lines(request, [WeightedFile("loras/a b.safetensors", 0.7)], 15, 4.0, "toy")
    assert shlex.split(lines["compose"])[2:6] == ["loras/a b.safetensors:0.7", "--prompt", "a face; echo 'owned'",
                                                  "-n"]
    assert "--sequential" in lines["compose"] and "generate" not in lines and "save" not in lines


def test_the_command_line_names_a_bad_folder_or_a_taken_port_in_one_line(tmp_path):
    from loramix.cli import main

    result = CliRunner().invoke(main, ["serve", "--loras", str(tmp_path / "nowhere")])
    assert_clean_error(result, "nowhere: not a folder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--loras", str(tmp_path), "--port", str(port)])
    assert_clean_error(result, f"--port {port}: cannot listen there")


def test_listening_beyond_loopback_is_warned_about():
    from loramix.serve.server import exposure_warning

    assert all(exposure_warning(host, 7860) is None for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost.example"):
        assert exposure_warning(host, 7860).startswith(f"Warning: listening on {host}: anyone")


def test_without_the_extra_it_says_which_to_install(monkeypatch):
    import sys

    from loramix.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if `pip install loramix` alone
    assert_clean_error(CliRunner().invoke(main, ["serve"]), "uvicorn is missing", "pip install 'loramix[serve]'")


# --- the real server --------------------------------------------------------------------------------------------

TIMEOUT = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`loramix serve --loras loras --loras changing` from a scratch folder: (url, process, folder, log)."""
    root = tmp_path_factory.mktemp("serve")
    (root / "loras").mkdir()
    (root / "changing").mkdir()
    write_toy_lora(root / "loras" / "a.safetensors", seed=0, scale=8, metadata={META_TRIGGER: "mustache"})
    write_toy_lora(root / "loras" / "b.safetensors", seed=1, scale=8)
    write_toy_lora(root / "changing" / "c.safetensors", seed=2, scale=8)
    (root / "loras" / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    (root / "loras" / "passwd.safetensors").symlink_to("/etc/passwd")
    log = root / "server.log"
    process, url = start_server(["loras", "changing"], cwd=root, log=log, env={"OMP_NUM_THREADS": "1"})
    try:
        yield url, process, root, log
    finally:
        assert stop_server(process) == 0  # Ctrl-C stops it cleanly


@pytest.mark.slow  # a server process of its own, loaded and stopped
def test_a_server_started_as_a_background_job_still_stops_on_ctrl_c(tmp_path):
    """`loramix serve &` inherits SIGINT ignored from the shell; the server takes it back, so Ctrl-C (SIGINT)
    stops it cleanly all the same."""
    process, url = start_server(["."], cwd=tmp_path, log=tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"},
                                sigint_ignored=True)
    assert call(url, "/")[0] == 200  # serving, past its start-up
    assert stop_server(process) == 0, (tmp_path / "server.log").read_text()[-2000:]


def call(url: str, path: str, body: dict | None = None, timeout: float = TIMEOUT) -> tuple[int, dict | bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(payload) if "json" in kind else payload


def preview(url: str, weights: dict[str, float], client: str = "test", sequence: int = 0, **settings):
    body = {"loras": [{"name": n, "weight": w} for n, w in weights.items()], "client": client,
            "sequence": sequence, "count": 2, **settings}
    return call(url, "/api/preview", body)


def png(data_url: str) -> Image.Image:
    import base64

    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


@pytest.mark.slow
def test_the_listing_shows_what_inspect_knows_and_bad_files_with_their_error(server):
    url, process, _, _ = server
    status, body = call(url, "/api/loras")
    entries = {entry["name"]: entry for entry in body["loras"]}
    assert status == 200 and set(entries) == {"loras/a.safetensors", "loras/b.safetensors",
                                              "loras/broken.safetensors", "changing/c.safetensors"}
    a = entries["loras/a.safetensors"]
    assert a["rank"] == [4] and a["components"] == ["unet"] and a["triggers"] == ["mustache"]
    assert a["targets"] == {"unet": ["to_k", "to_out.0", "to_q", "to_v"]} and a["misfit"] is None
    broken = entries["loras/broken.safetensors"]["error"]
    assert broken.startswith("loras/broken.safetensors: ") and "\n" not in broken
    status, body = preview(url, {"loras/broken.safetensors": 1.0})
    assert status == 422 and body["error"].startswith("loras/broken.safetensors")
    assert process.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("name, status", [("../../etc/passwd", 403), ("/etc/passwd", 403),
                                          ("loras/passwd.safetensors", 403), ("loras/../changing/c.safetensors", 403),
                                          ("nowhere/x.safetensors", 404)])
def test_names_outside_the_folders_get_a_4xx_from_every_endpoint_and_are_logged(server, name, status):
    url, process, _, log = server
    for path, extra in (("/api/preview", {}), ("/api/save", {"format": "diffusers"}),
                        ("/api/xy", {"x": name, "y": "loras/a.safetensors", "x_weights": "0,1", "y_weights": "0,1"})):
        got, body = call(url, path, {"loras": [{"name": name, "weight": 1}], **extra})
        assert got == status, (path, body)
        assert "LoRA " in body["error"]
    assert f"refused LoRA name {ascii(name)}" in log.read_text()
    assert process.poll() is None


@pytest.mark.slow
def test_a_preview_is_what_its_command_line_renders(server, monkeypatch):
    url, _, root, _ = server
    status, shown = preview(url, {"loras/a.safetensors": 0.6, "loras/b.safetensors": -0.4}, seed=5)
    assert status == 200 and shown["seeds"] == [5, 6] and len(shown["judge"]) == 2
    assert set(shown["judge"][0]) == {"face", "mustache", "lipstick", "glasses"}
    assert "<lora:a:0.6> <lora:b:-0.4>" in shown["parameters"][0]
    assert png(shown["images"][0]).info["parameters"] == shown["parameters"][0]
    from loramix.cli import main

    monkeypatch.chdir(root)
    for kind in ("compose", "generate"):
        arguments = shlex.split(shown["commands"][kind])[1:]
        arguments[arguments.index("preview")] = f"out-{kind}"
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, result.output
        for k, seed in enumerate(shown["seeds"]):
            with Image.open(root / f"out-{kind}" / f"{k:05d}-{seed}.png") as written:
                assert written.info["parameters"] == shown["parameters"][k]
                assert written.convert("RGB").tobytes() == png(shown["images"][k]).convert("RGB").tobytes()


@pytest.mark.slow
def test_a_tag_in_the_prompt_renders_what_its_slider_renders(server):
    """`<lora:a:0.25>` in the page's prompt is loras/a.safetensors at 0.25, added to its slider's weight; the
    settings keep what was typed, so the history restores the prompt with its tag."""
    url, _, _, _ = server
    _, by_slider = preview(url, {"loras/a.safetensors": 0.75, "loras/b.safetensors": -0.4}, seed=5)
    status, by_tag = preview(url, {"loras/a.safetensors": 0.5, "loras/b.safetensors": -0.4}, seed=5,
                             prompt="a face <lora:a:0.25>")
    assert status == 200, by_tag
    assert by_tag["images"] == by_slider["images"] and by_tag["parameters"] == by_slider["parameters"]
    assert by_tag["settings"]["prompt"] == "a face <lora:a:0.25>"
    assert {entry["name"]: entry["weight"] for entry in by_tag["settings"]["loras"]} == {
        "loras/a.safetensors": 0.5, "loras/b.safetensors": -0.4}
    for prompt, message in (("a face <lora:zzz:1>", "prompt: the tag '<lora:zzz:1>' names no LoRA the page lists"),
                            ("a face <lora:a:0@0,1@1>", "the page takes a plain weight"),
                            ("a face <lora:a:1", "prompt: the tag '<lora:a:1' is not closed")):
        status, body = preview(url, {}, prompt=prompt)
        assert status == 422 and body["error"].startswith("prompt: the tag") and message in body["error"]


def test_a_tag_names_one_listed_file():
    from loramix.render.prompt_tags import find_lora_tags
    from loramix.serve.mix import listed_name

    names = ["loras/a.safetensors", "loras/sub/b.safetensors", "changing/b.safetensors"]
    tag = lambda text: find_lora_tags("a face " + text)[1][0]  # noqa: E731
    assert listed_name(tag("<lora:a:1>"), names) == "loras/a.safetensors"
    assert listed_name(tag("<lora:sub/b:1>"), names) == "loras/sub/b.safetensors"
    assert listed_name(tag("<lora:changing/b.safetensors>"), names) == "changing/b.safetensors"
    with pytest.raises(LoramixError, match="could be loras/sub/b.safetensors or changing/b.safetensors"):
        listed_name(tag("<lora:b:1>"), names)
    with pytest.raises(LoramixError, match="names no LoRA the page lists"):
        listed_name(tag("<lora:c:1>"), names)


@pytest.mark.slow
def test_every_method_previews_and_names_itself_as_the_commands_do(server):
    url, _, _, _ = server
    two = {"loras/a.safetensors": 0.5, "loras/b.safetensors": 0.5}
    texts = {}
    for method in RENDER_METHODS:
        status, body = preview(url, two, method=method, strength=0.5)
        if method == "regional":  # the page gives no masks, and the prompt holds neither LoRA's trigger word
            assert status == 422 and "a has no mask" in body["error"], body
            continue
        assert status == 200, (method, body)
        texts[method] = body["parameters"][0]
    assert "Composition" not in texts["exact"] and "Composition: ties density 0.5" in texts["ties"]
    assert "Composition: switch every 1" in texts["switch"] and "Denoising strength: 0.5" in texts["sequential"]
    assert len(set(texts.values())) == len(texts)
    status, body = preview(url, {}, method="composite")
    assert status == 422 and "switch at least one on" in body["error"]


@pytest.mark.slow
@pytest.mark.parametrize("file_format, method", [("diffusers", "exact"), ("kohya", "exact"), ("diffusers", "dare")])
def test_the_saved_composition_is_what_compose_o_writes(server, monkeypatch, file_format, method):
    url, _, root, _ = server
    body = {"loras": [{"name": "loras/a.safetensors", "weight": 0.7},
                      {"name": "changing/c.safetensors", "weight": 0.3}],
            "method": method, "seed": 2, "format": file_format, "client": "save"}
    status, saved = call(url, "/api/save", body)
    assert status == 200 and isinstance(saved, bytes)
    from loramix.cli import main

    monkeypatch.chdir(root)
    out = f"cli-{file_format}-{method}.safetensors"
    arguments = ["compose", "loras/a.safetensors:0.7", "changing/c.safetensors:0.3", "--method", method, "--seed", "2",
                 "--format", file_format, "-o", out]
    assert CliRunner().invoke(main, arguments).exit_code == 0
    assert safetensors_parts(saved) == safetensors_parts((root / out).read_bytes())


@pytest.mark.slow
def test_a_file_replaced_on_disk_is_read_again(server):
    url, process, root, _ = server
    target = root / "changing" / "c.safetensors"
    status, before = preview(url, {"changing/c.safetensors": 1.0})
    assert status == 200
    replacement = root / "changing" / ".c.new"
    write_toy_lora(replacement, seed=7, scale=8)
    os.replace(replacement, target)
    status, after = preview(url, {"changing/c.safetensors": 1.0})
    assert status == 200
    old_hash, new_hash = (p["parameters"][0].split('"c: ')[1][:12] for p in (before, after))
    assert old_hash != new_hash
    assert before["images"][0] != after["images"][0]

    target.write_bytes(b"garbage now")  # replaced in place by something that is no LoRA
    status, body = preview(url, {"changing/c.safetensors": 1.0})
    assert status == 422 and body["error"].startswith("changing/c.safetensors")
    listed = {e["name"]: e for e in call(url, "/api/loras")[1]["loras"]}
    assert listed["changing/c.safetensors"]["error"]
    assert preview(url, {"loras/a.safetensors": 1.0})[0] == 200 and process.poll() is None
    write_toy_lora(target, seed=2, scale=8)  # back as the other tests made it


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def close_mid_render(url: str, body: dict) -> None:
    """A tab closed while its request renders: send the request, then hang up without reading."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"POST /api/preview HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(0.05)


@pytest.mark.slow
def test_two_tabs_a_closed_tab_and_300_slider_moves(server, capsys):
    """300 moves in 30 s from two tabs, each move its own request as the page sends them: every render shown
    carries its own request's weight, each tab's last move is rendered, nothing piles up, memory stays flat."""
    url, process, _, _ = server
    for warm in range(3):
        assert preview(url, {"loras/a.safetensors": 0.1 * warm, "loras/b.safetensors": 0.5}, client="warm")[0] == 200
    before = rss_mib(process.pid)
    moves, seconds = 300, 30.0
    results: dict[tuple[str, int], tuple[int, dict]] = {}

    def move(tab: str, i: int) -> None:
        weight = round(-1 + 3 * i / moves, 2)
        results[(tab, i)] = (weight, preview(url, {"loras/a.safetensors": weight, "loras/b.safetensors": 0.5},
                                             client=tab, sequence=i))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=48) as pool:
        for i in range(moves):
            time.sleep(max(0.0, start + i * seconds / moves - time.monotonic()))
            pool.submit(move, "tab-a" if i % 2 == 0 else "tab-b", i)
            if i == moves // 2:
                pool.submit(close_mid_render, url, {"loras": [{"name": "loras/b.safetensors", "weight": 1.5}],
                                                    "client": "closed", "count": 8})
    elapsed = time.monotonic() - start
    after = rss_mib(process.pid)

    shown = {key: body for key, (_, (status, body)) in results.items() if status == 200}
    statuses = {status for _, (status, _) in results.values()}
    assert statuses <= {200, 409}, statuses
    for (tab, i), body in shown.items():
        weight = results[(tab, i)][0]
        assert body["sequence"] == i and f"<lora:a:{weight:g}>" in body["parameters"][0]
    assert ("tab-a", moves - 2) in shown and ("tab-b", moves - 1) in shown  # each tab's last move is rendered
    status = call(url, "/api/status")[1]
    assert status["most_waiting"] <= 3 and status["waiting"] == 0  # two tabs and the closed one, never more
    assert preview(url, {"loras/b.safetensors": 1.0}, client="after")[0] == 200 and process.poll() is None
    with capsys.disabled():
        print(f"\n300 moves in {elapsed:.1f} s: {len(shown)} rendered, {moves - len(shown)} superseded; "
              f"server RSS {before:.1f} MiB before, {after:.1f} MiB after")
    assert after - before < 64, (before, after)

