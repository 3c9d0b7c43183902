"""`loramix faces`: write a captioned dataset of generated faces, e.g. a LoRA's training set."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--count", type=click.IntRange(min=1), default=36, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same faces (with or without "
              "attributes).")
@click.option("--mustache", is_flag=True, help="Every face wears a mustache.")
@click.option("--lipstick", is_flag=True, help="Every face wears lipstick.")
@click.option("--glasses", is_flag=True, help="Every face wears glasses.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
@click.option("--masks", is_flag=True, help="Write each face's attribute mask too, as 0000.mask.png (white: the "
              "pixels the attributes drew), for masked_loss training.")
@click.option("--phrasings", type=click.IntRange(min=1), default=1, show_default=True,
              help="Captions per face, one a line: the caption and rephrasings of it (details in another order, "
                   "some left out), for recipes with caption_per_line.")
def faces(folder, count, seed, mustache, lipstick, glasses, size, masks, phrasings) -> None:
    """Write COUNT faces to FOLDER as 0000.png + 0000.txt (its caption): the layout `loramix train` reads."""
    from loramix.toy.faces import write_dataset

    paths = write_dataset(folder, count, seed, mustache=mustache, lipstick=lipstick, glasses=glasses, size=size,
                          masks=masks, phrasings=phrasings)
    click.echo(f"wrote {len(paths)} faces with captions{' and masks' if masks else ''} to {folder}")
