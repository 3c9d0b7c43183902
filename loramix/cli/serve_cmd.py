"""`loramix serve`: a local page to mix LoRAs by eye, a slider per LoRA and a live preview."""

from __future__ import annotations

import logging
import signal
import sys

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
        import uvicorn  # noqa: F401  (the serve extra, checked before anything loads)

        from loramix.serve.app import create_app
    except ImportError as e:
        raise LoramixError(f"loramix serve needs its extra ({e.name} is missing): pip install 'loramix[serve]'") \
            from None
    from loramix.cli.quiet import quiet_libraries
    from loramix.models.load import load_base
    from loramix.serve.library import LoraLibrary
    from loramix.serve.server import address, exposure_warning, listen, serve_until_stopped
    from loramix.serve.studio import Studio
    from loramix.serve.worker import RenderWorker

    quiet_libraries()
    # A shell starts background jobs (`loramix serve &`) with SIGINT ignored, and Python then leaves it
    # ignored: the server could not be stopped the way the line below promises.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    library = LoraLibrary(list(folders) or ["."])
    listener = listen(host, port)
    worker = RenderWorker()
    try:
        loaded = load_base(base)
        judge, attributes = toy_judge() if base == "toy" else (None, ())
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
        app = create_app(Studio(loaded, base, library, judge), worker, attributes)
        warning = exposure_warning(host, listener.getsockname()[1])
        if warning:
            click.echo(warning, err=True)
        click.echo(f"loramix serve: {address(host, listener)}  ({len(library.names())} LoRA files; Ctrl-C stops it)")
        sys.stdout.flush()
        serve_until_stopped(app, listener, worker)
        click.echo("loramix serve: stopped")
    finally:
        worker.stop()
        listener.close()


def toy_judge():
    """The toy base's judge, reading each preview: the serve library itself never imports the toy."""
    from loramix.toy.judge import ATTRIBUTES, load_judge

    judge = load_judge()

    def read(images) -> list[dict[str, float]]:
        return [{name: round(score, 3) for name, score in zip(ATTRIBUTES, row)}
                for row in judge.scores(images).tolist()]

    return read, ATTRIBUTES
