"""Options that several commands share, spelled once (a helper, not a command)."""

from __future__ import annotations

import click

SIZE_HELP = "Default: the base's resolution (64 for the toy base, 512 for SD 1.5, 1024 for SDXL)."
SCHEDULE_HELP = ("WEIGHT may follow a step schedule: 0.8@0.3-1 (0.8 from 30% of the steps to the end, off before) "
                 "or keyframes 0@0,1@0.4,1@1 (interpolated).")


def _multiple_of_8(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value % 8:
        raise click.BadParameter("width and height are multiples of 8", param_hint="--width/--height")
    return value


def image_size_options(command):
    """`--width` and `--height`, each a multiple of 8 when given."""
    for name in ("height", "width"):
        command = click.option(f"--{name}", type=click.IntRange(min=8), callback=_multiple_of_8,
                               help=f"Image {name}. {SIZE_HELP}")(command)
    return command


def dtype_option(command):
    """`--dtype`: the precision the base loads in."""
    from loramix.choices import DTYPES

    return click.option("--dtype", "dtype", type=click.Choice(DTYPES), default=None,
                        help="The base's precision (its compute precision when quantized). Default: what fits the "
                             "device: fp32 on a CPU for bases up to a quarter of its memory, else bf16; bf16 on "
                             "GPUs that have it, else fp16.")(command)


TAGS_HELP = ("A prompt may carry <lora:NAME:WEIGHT> tags, as in A1111: NAME.safetensors is found in the --loras "
             "folders, the tag leaves the text the encoder sees, and a tag and a --lora naming the same file add "
             "their weights.")


def lora_folders_option(command):
    """`--loras`: where `<lora:NAME:WEIGHT>` tags find their files."""
    return click.option("--loras", "lora_folders", multiple=True, type=click.Path(file_okay=False),
                        help="A folder where <lora:NAME:WEIGHT> tags in prompts find NAME.safetensors, its "
                             "subfolders too (repeatable).  [default: the current folder]")(command)
