"""Reading an image file whole, with one kind of error for every way it can be unreadable."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from loramix.errors import LoramixError


def open_image(path: str | Path, what: str = "", error: type[LoramixError] = LoramixError) -> Image.Image:
    """The image at `path`, fully decoded, so that a truncated file fails here and not halfway through its
    use. A missing or unreadable file raises `error`, its message naming the file (after `what`, if given)."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise error(f"{name}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else str(e) or type(e).__name__
        raise error(f"{name}: not a readable image ({reason})") from None
