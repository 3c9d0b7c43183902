"""`loramix judge`: what the judge sees in images: a face, a mustache, lipstick, glasses."""

from __future__ import annotations

import json
from pathlib import Path

import click

from loramix.choices import IMAGE_SUFFIXES, MASK_SUFFIX

GRID_NAME = "grid.png"  # `loramix generate` writes its images and a grid of them: the grid is not one image


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (verdicts and scores per image, and the summary).")
def judge(paths: tuple[Path, ...], as_json: bool) -> None:
    """Judge images (files, or the .png and .jpg images in folders): does each show a face, mustache, lipstick,
    glasses?"""
    from loramix.errors import LoramixError
    from loramix.toy.judge import ATTRIBUTES, load_judge, read_images, summarize

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and p.name != GRID_NAME and not p.name.endswith(MASK_SUFFIX))
        else:
            files.append(path)
    if not files:
        raise LoramixError(f"no .png or .jpg images in {', '.join(map(str, paths))}")
    images = read_images(files)
    scores = load_judge().scores(images)
    verdicts = scores > 0.5
    summary = summarize(verdicts)
    if as_json:
        rows = [{"image": str(file), "verdicts": dict(zip(ATTRIBUTES, row.tolist())),
                 "scores": {a: round(s, 4) for a, s in zip(ATTRIBUTES, score.tolist())}}
                for file, row, score in zip(files, verdicts, scores)]
        click.echo(json.dumps({"images": rows, "summary": summary}, indent=2))
        return
    for file, row in zip(files, verdicts):
        seen = [attribute for attribute, shown in zip(ATTRIBUTES, row.tolist()) if shown]
        click.echo(f"{file}: {', '.join(seen) if seen else 'nothing'}")
    click.echo(f"{len(files)} images: " + ", ".join(f"{a} {summary[a]:.0%}" for a in ATTRIBUTES))
