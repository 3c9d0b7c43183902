"""`loramix env`: what a bug report needs, as `diffusers-cli env` and `accelerate env` print it."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json: bool) -> None:
    """Versions of loramix, Python and its dependencies, the accelerators torch sees, where the toy base lies,
    and whether the installed versions match the lock the test suite passed with."""
    from loramix.models.environment import describe

    found = describe()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), indent=2))
        return
    click.echo(f"loramix {found.loramix}")
    click.echo(f"Python {found.python}")
    click.echo(f"platform {found.platform}")
    for name, version in found.packages.items():
        click.echo(f"{name} {version or 'not installed'}")
    click.echo("accelerators: " + ", ".join(f"{kind} {state}" for kind, state in found.accelerators.items()))
    click.echo(f"toy base: {found.toy_base}")
    if found.lock is None:
        click.echo("lock: none beside this install (not a source checkout)")
    elif not found.mismatches:
        click.echo(f"lock: {found.lock}: every locked version is installed")
    else:
        differing = ", ".join(f"{m.package} {m.installed or 'missing'} (lock {m.locked})" for m in found.mismatches)
        click.echo(f"lock: {found.lock}: {len(found.mismatches)} differ: {differing}")
