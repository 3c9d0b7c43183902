"""`loramix train` with an exponential moving average of the LoRA's weights written in place of its last step's
(OneTrainer's and ai-toolkit's EMA, diffusers' EMAModel), tried for the mustache and not kept (docs/training.md,
"Beside the faces: an average of the weights, dropout, captions, min-SNR"). The arguments are `loramix train`'s:

    python bench/train_with_ema.py --decay 0.995 recipes/mustache.toml --seed 0 --output build/runs/ema
    python bench/bench_single.py mustache=build/runs/ema/mustache.safetensors --set tune --first 64

The average starts after the first optimizer step and follows each one; EMAModel's own warm-up,
decay = min(decay, (1 + s) / (10 + s)), keeps the first steps from dominating it. A run interrupted and resumed
starts a new average, so use it on runs that go through.
"""

from __future__ import annotations

import sys

import loramix.train.loop as loop
from loramix.cli import main as loramix_main


def with_ema(decay: float) -> None:
    """Wrap the loop's step and its final write so that the written LoRA is the average's."""
    from diffusers.training_utils import EMAModel

    step, write = loop._train_step, loop._write_outputs
    average: EMAModel | None = None  # made at the first step, from the trainee's own parameters

    def averaged_step(model, *args, **kwargs):
        nonlocal average
        loss = step(model, *args, **kwargs)
        if average is None:
            average = EMAModel(model.trainable_parameters(), decay=decay)
        average.step(model.trainable_parameters())
        return loss

    def write_average(model, *args, **kwargs):
        average.copy_to(model.trainable_parameters())
        return write(model, *args, **kwargs)

    loop._train_step, loop._write_outputs = averaged_step, write_average


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--decay":
        sys.exit("usage: python bench/train_with_ema.py --decay D RECIPE [loramix train options]")
    with_ema(float(sys.argv[2]))
    sys.argv = ["loramix", "train", *sys.argv[3:]]
    loramix_main()
