"""`loramix train RECIPE.toml`: train a LoRA; every recipe key is also a flag that overrides it."""

from __future__ import annotations

from pathlib import Path

import click

from loramix.train.recipe import KEYS, help_of, value_type


def _key_options(command):
    """A flag per recipe key, its help the key's own: `--rank 8`, `--flip/--no-flip`, `--targets to_q,to_k`."""
    for key in reversed(list(KEYS)):
        flag = "--" + key.replace("_", "-")
        kind = value_type(key)
        if kind is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", key, default=None, help=_help(key))
        elif kind is list:
            option = click.option(flag, key, default=None, help=_help(key, "comma-separated"))
        else:
            option = click.option(flag, key, type=kind, default=None, help=_help(key))
        command = option(command)
    return command


def _help(key: str, form: str = "") -> str:
    return f"Recipe key {key}{f' ({form})' if form else ''}: {help_of(key)}"


@click.command(context_settings={"max_content_width": 100})
@click.argument("recipe", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resume", is_flag=False, flag_value="latest", default=None,
              help="Continue from a checkpoint: the run's latest (no value) or the checkpoint folder given.")
@_key_options
def train(recipe: Path | None, resume: str | None, **values) -> None:
    """Train a LoRA over a frozen base (4-bit NF4 by default) as RECIPE says, flags overriding its keys."""
    from loramix.cli.quiet import quiet_libraries
    from loramix.cli.status import TerminalStatus
    from loramix.train.loop import train as run_training
    from loramix.train.recipe import make_recipe

    quiet_libraries()

    overrides = {}
    for key, value in values.items():
        if value is None:
            continue
        if value_type(key) is list:
            value = [item.strip() for item in value.split(",") if item.strip()]
        overrides[key] = value
    config = make_recipe(recipe, overrides)
    result = run_training(config, resume=resume, progress=True, report=lambda note: click.echo(note, err=True),
                          status=TerminalStatus())
    if result.main_process:
        click.echo(f"wrote {result.adapter} after {result.steps} steps in {result.seconds:.0f} s "
                   f"(final loss {result.final_loss:.4f}; log, loss plot and samples in {result.run})")
