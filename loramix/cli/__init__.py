"""The `loramix` command line: a thin layer over the library that turns its errors into one-line messages."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import traceback

import click

from loramix import __version__
from loramix.cli.bake_cmd import bake
from loramix.cli.build_cmd import build_base
from loramix.cli.compose_cmd import compose
from loramix.cli.edit_cmd import edit
from loramix.cli.env_cmd import env
from loramix.cli.extract_cmd import extract
from loramix.cli.faces_cmd import faces
from loramix.cli.generate_cmd import generate
from loramix.cli.inspect_cmd import inspect
from loramix.cli.judge_cmd import judge
from loramix.cli.resize_cmd import resize
from loramix.cli.serve_cmd import serve
from loramix.cli.train_cmd import train
from loramix.cli.xy_cmd import xy
from loramix.errors import LoramixError
from loramix.util.memory import return_freed_memory_to_the_system


class LoramixGroup(click.Group):
    def invoke(self, ctx: click.Context):
        # bitsandbytes warns about a missing optional CPU kernel as it is imported, which any command may do
        # first: quiet it before any command runs (the logging module only; no heavy import here).
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        return_freed_memory_to_the_system()
        try:
            return super().invoke(ctx)
        except LoramixError as e:
            if os.environ.get("LORAMIX_DEBUG") == "1":
                click.echo(full_traceback(e), err=True, nl=False)
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left behind", err=True)
            ctx.exit(130)


def full_traceback(error: BaseException) -> str:
    """Every traceback behind a one-line error, the first cause first, including those the library raised
    `from None` to keep the line short: what LORAMIX_DEBUG=1 prints."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    parts = ["".join(traceback.format_exception(e, chain=False)) for e in reversed(chain)]
    return "\nThe above exception led to the next one:\n\n".join(parts)


@click.group(cls=LoramixGroup)
@click.version_option(__version__, prog_name="loramix")
def main() -> None:
    """Train, compose and render Stable Diffusion LoRAs."""


def run() -> None:
    """The `loramix` console script: `main` in a process of its own."""
    rare_full_collections()
    # As the process ends, Python's collector walks every object torch, transformers and diffusers made: a
    # second or more after a render. The process gives all of that memory back as it exits anyway.
    atexit.register(gc.freeze)
    main()


def rare_full_collections() -> None:
    """A command imports torch, transformers and diffusers as it starts: half a million objects that live as long
    as the process. The collector's full passes walk every one of them, and by default it makes one whenever they
    have grown by a quarter: a second of a five-second start (`python bench/bench_start.py`). Full passes come a
    hundred times rarer; the young generations, where short-lived garbage is, are collected as before."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


main.add_command(inspect)
main.add_command(compose)
main.add_command(edit)
main.add_command(env)
main.add_command(build_base)
main.add_command(generate)
main.add_command(faces)
main.add_command(judge)
main.add_command(serve)
main.add_command(train)
main.add_command(xy)
main.add_command(resize)
main.add_command(extract)
main.add_command(bake)
