"""`loramix judge`: what the judge sees in images: face, mustache, lipstick, glasses."""

from __future__ import annotations

import json
from pathlib import Path

import click

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def judge(paths: tuple[Path, ...], as_json: bool) -> None:
    """Judge images (files, or every image in folders): does each show a face, mustache, lipstick, glasses?"""
    from loramix.errors import LoramixError
    from loramix.judge import ATTRIBUTES, load_judge, read_images, summarize

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png")
        elif path.is_file():
            files.append(path)
        else:
            raise LoramixError(f"{path}: no such file or folder")
    if not files:
        raise LoramixError(f"no images in {', '.join(map(str, paths))}")
    images = read_images(files)
    verdicts = load_judge().verdicts(images)
    summary = summarize(verdicts)
    if as_json:
        rows = [{"image": str(f), **{a: bool(v) for a, v in zip(ATTRIBUTES, row.tolist())}}
                for f, row in zip(files, verdicts)]
        click.echo(json.dumps({"images": rows, "summary": summary}, indent=2))
        return
    for f, row in zip(files, verdicts):
        seen = [a for a, v in zip(ATTRIBUTES, row.tolist()) if v]
        click.echo(f"{f}: {', '.join(seen) if seen else 'nothing'}")
    click.echo(f"{len(files)} images: " + ", ".join(f"{a} {summary[a]:.0%}" for a in ATTRIBUTES))
