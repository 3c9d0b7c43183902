"""`loramix serve`: a local page to mix LoRAs by eye, a slider per LoRA and a live preview."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading

import click

LOOPBACK = "127.0.0.1"


@click.command()
@click.option("--base", default="toy", show_default=True, help="'toy', a diffusers folder or a .safetensors file.")
@click.option("--loras", "folders", multiple=True, type=click.Path(file_okay=False),
              help="A folder of LoRA files (repeatable; its subfolders too).  [default: the current folder]")
@click.option("--host", default=LOOPBACK, show_default=True,
              help="Address to listen on; anything but loopback lets other machines render on yours.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
              help="Port to listen on (0: any free one).")
def serve(base, folders, host, port) -> None:
    """Serve a page that lists the LoRAs in FOLDERS, mixes the ones switched on at the weights of their sliders,
    and shows the preview as a slider moves. Needs `pip install 'loramix[serve]'`."""
    from loramix.errors import LoramixError

    try:
        import uvicorn

        from loramix.serve.app import create_app
    except ImportError as e:
        raise LoramixError(f"loramix serve needs its extra ({e.name} is missing): pip install 'loramix[serve]'") \
            from None
    from loramix.cli.quiet import quiet_libraries
    from loramix.models.load import load_base
    from loramix.serve.library import LoraLibrary
    from loramix.serve.studio import Studio
    from loramix.serve.worker import RenderWorker

    quiet_libraries()
    library = LoraLibrary(list(folders) or ["."])
    listener = _listen(host, port)
    try:
        loaded = load_base(base)
        judge, attributes = toy_judge() if base == "toy" else (None, ())
    except BaseException:
        listener.close()
        raise
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    worker = RenderWorker()
    try:
        app = create_app(Studio(loaded, base, library, judge), worker, attributes)
        bound = listener.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        warning = exposure_warning(host, bound)
        if warning:
            click.echo(warning, err=True)
        click.echo(f"loramix serve: http://{shown}:{bound}/  ({len(library.names())} LoRA files; Ctrl-C stops it)")
        sys.stdout.flush()
        # The web server answers on a thread of its own; this thread, which loaded the pipeline, renders.
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
        web = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="loramix-web", daemon=True)
        web.start()
        try:
            worker.run(while_alive=web.is_alive)
        except KeyboardInterrupt:
            pass
        finally:
            worker.stop()  # the waiting requests are told the server is stopping
            server.should_exit = True
            web.join(10)
        click.echo("loramix serve: stopped")
    finally:
        worker.stop()
        listener.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound before the address is printed, so `--port 0` prints the port it got."""
    from loramix.errors import LoramixError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise LoramixError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    listener.listen(64)
    return listener


def exposure_warning(host: str, port: int) -> str | None:
    """What to tell a user who listens beyond this machine, or None on loopback."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"Warning: listening on {host}: anyone who reaches this machine on port {port} can render on it and "
            "read the LoRAs served")


def toy_judge():
    """The toy base's judge, reading each preview: the serve library itself never imports the toy."""
    from loramix.toy.judge import ATTRIBUTES, load_judge

    judge = load_judge()

    def read(images) -> list[dict[str, float]]:
        return [{name: round(score, 3) for name, score in zip(ATTRIBUTES, row)}
                for row in judge.scores(images).tolist()]

    return read, ATTRIBUTES
