"""A loss plot drawn with Pillow: the raw loss in a light line, its moving average in a dark one."""

from __future__ import annotations

import math
import os

from PIL import Image, ImageDraw

from loramix.util.atomic import atomic_path


def moving_average(values: list[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averaged.append(total / min(i + 1, window))
    return averaged


def loss_plot(steps: list[int], losses: list[float], path: str | os.PathLike, title: str = "training loss",
              size: tuple[int, int] = (640, 360)) -> None:
    """Write a PNG plot of loss against step, on a log scale when the loss spans more than a factor of 10."""
    width, height = size
    left, right, top, bottom = 64, 16, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    finite = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v) and v > 0]
    if len(finite) >= 2:
        xs, ys = zip(*finite)
        log = max(ys) / min(ys) > 10
        transform = math.log10 if log else (lambda v: v)
        low, high = transform(min(ys)), transform(max(ys))
        high = high if high > low else low + 1
        first, last = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1

        def point(step: float, value: float) -> tuple[float, float]:
            x = left + (step - first) / (last - first) * (width - left - right)
            y = top + (high - transform(value)) / (high - low) * (height - top - bottom)
            return x, y

        draw.rectangle((left, top, width - right, height - bottom), outline=(160, 160, 160))
        for fraction in (0, 0.5, 1):
            value = 10 ** (low + fraction * (high - low)) if log else low + fraction * (high - low)
            y = top + (1 - fraction) * (height - top - bottom)
            draw.text((4, y - 6), f"{value:.3g}", fill="black")
        for fraction in (0, 0.5, 1):
            step = first + fraction * (last - first)
            draw.text((left + fraction * (width - left - right) - 12, height - bottom + 6), f"{step:.0f}", fill="black")
        draw.text((width // 2 - 12, height - 16), "step" + (" (loss on a log scale)" if log else ""), fill="black")
        draw.line([point(s, v) for s, v in finite], fill=(170, 200, 240), width=1)
        smooth = moving_average(list(ys), max(1, len(ys) // 20))
        draw.line([point(s, v) for s, v in zip(xs, smooth)], fill=(20, 70, 160), width=2)
    with atomic_path(path) as temp:
        image.save(temp, format="PNG")
