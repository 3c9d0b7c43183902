"""Training recipes: a TOML file mapped onto one dataclass, every key also a command-line flag.

    loramix train recipes/mustache.toml --rank 8 --steps 300

Unknown keys are errors that suggest the closest known key; values are checked in `__post_init__` with
messages that say what to choose instead. Paths in a recipe are relative to the recipe file. A key whose
default comes from elsewhere (the base, rank, learning_rate) is None until set: in TOML, leave it out.
Each field's `help` is its flag's `--help` text.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from loramix.choices import DEFAULT_FORMAT, DTYPES, FORMATS, QUANTIZE_MODES
from loramix.errors import RecipeError, did_you_mean

UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULES = ("constant", "cosine")
PATH_KEYS = ("dataset", "output", "base")

# What leaving an optional key out gives, for the message when a recipe sets it to 0 (which meant "not set"
# before None did) or below.
UNSET = {
    "resolution": "for the base's own resolution",
    "alpha": "for alpha = rank",
    "text_encoder_learning_rate": "for the same rate as learning_rate",
    "steps": "to train by epochs",
    "epochs": "to train by steps",
    "sample_steps": "for the base's default",
    "snr_gamma": "for plain MSE",
    "max_timestep": "for the base scheduler's num_train_timesteps",
}
UNSET_NAMES = {"output": "for runs/<name>", "name": "to name the adapter after the recipe file"}


@dataclass(frozen=True)
class TrainRecipe:
    """A training run's settings, exactly as asked for: None is "not set", and what that means (the base's own
    resolution, alpha = rank …) is in each key's help; values derived from others are properties."""

    # What to learn from.
    dataset: str = field(default="", metadata={"help": (
        "A folder of images with same-name .txt captions, or one with a metadata.jsonl.")})
    trigger: str = field(default="", metadata={"help": (
        "A rare word the LoRA ties its attribute to; caption_template puts it in every caption.")})
    caption_template: str = field(default="{trigger} {caption}", metadata={"help": (
        "How each caption is written, from {trigger} and the image's own {caption}.")})
    caption_per_line: bool = field(default=False, metadata={"help": (
        "Each line of a caption file is a caption of its own, one drawn per image per step (OneTrainer's way; "
        "kohya reads the first line): several phrasings teach the attribute, not one sentence.")})
    caption_dropout: float = field(default=0.0, metadata={"help": (
        "The chance, per image per step, that its caption is left empty (kohya's caption_dropout_rate), in "
        "[0, 1): the LoRA learns some of its attribute unconditioned. 0: every caption is read.")})
    # The frozen base.
    base: str = field(default="toy", metadata={"help": (
        '"toy" (shipped), a diffusers pipeline folder, a single-file .safetensors or a hub id.')})
    resolution: int | None = field(default=None, metadata={"help": (
        "The training images' side in pixels, a multiple of 8; unset: the base's own (64 for the toy base, "
        "512 for SD 1.5, 1024 for SDXL).")})
    skip_bad_images: bool = field(default=False, metadata={"help": (
        "Leave unreadable images out, naming them, instead of stopping the run at the first.")})
    flip: bool = field(default=False, metadata={"help": (
        "Random horizontal flips: doubles the data when the attribute is symmetric.")})
    masked_loss: bool = field(default=False, metadata={"help": (
        "Weight the loss by each image's mask (0000.mask.png beside 0000.png, white: learn; else the image's "
        "alpha channel), as kohya's masked_loss: the LoRA learns from its region. Images without a mask count "
        "whole.")})
    # 0.05 rather than kohya's 0 (the outside ignored): the rest of the image still counts a little. Ignored while
    # masked_loss is off, so `--no-masked-loss` trains a masked recipe plainly.
    masked_loss_weight: float = field(default=0.05, metadata={"help": (
        "With masked_loss, the loss's weight outside the masks, in [0, 1]: 0 ignores it, 1 is the plain loss.")})
    # OneTrainer's masked prior preservation. Without it the outside only stops being learned from; nothing asks
    # the LoRA to leave it as the base draws it, and measured, a masked LoRA changed the rest of the image as much
    # as a plain one.
    masked_prior_preservation_weight: float = field(default=0.0, metadata={"help": (
        "With masked_loss, also pull the prediction outside the masks towards the base's own (the LoRA off), with "
        "this weight (≥ 0; 0: off). Costs one more UNet call a step, without gradients.")})
    # What to train.
    targets: list[str] = field(default_factory=lambda: list(UNET_ATTENTION), metadata={"help": (
        "The UNet modules that get a LoRA (default: the attention projections).")})
    train_text_encoder: bool = field(default=False, metadata={"help": (
        "Put LoRAs on the text encoder(s) too: for a trigger whose meaning the base does not know.")})
    text_encoder_targets: list[str] = field(default_factory=lambda: list(TEXT_ENCODER_ATTENTION), metadata={
        "help": "The text encoder modules that get a LoRA when train_text_encoder is true."})
    rank: int = field(default=8, metadata={"help": "The LoRA's rank r, the inner size of B·A."})
    orthogonal_slot: int | None = field(default=None, metadata={"help": (
        "Orthogonal adaptation (Po et al. 2023): fix every LoRA layer's down-projection A to this slot's rows of "
        "a random orthogonal basis all loramix LoRAs share, and train only B; LoRAs trained in different slots "
        "read disjoint input directions, so their sum interferes less. Give each LoRA meant to be summed its "
        "own slot (0, 1, 2 …); unset: A trains as usual.")})
    orthogonal_slot_from_name: bool = field(default=False, metadata={"help": (
        "Take orthogonal_slot from the LoRA's name (its SHA-256 modulo the slots the smallest LoRA layer holds), "
        "for LoRAs trained apart with no one to hand out numbers; the file records the slot taken, and a sum "
        "of two that took the same one is refused.")})
    alpha: float | None = field(default=None, metadata={"help": (
        "Scales the LoRA's update by alpha/rank; unset: equal to rank, so the scale is 1.")})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path's input, in [0, 1)."})
    # How.
    learning_rate: float = field(default=1e-4, metadata={"help": "The UNet LoRA's peak learning rate."})
    text_encoder_learning_rate: float | None = field(default=None, metadata={"help": (
        "The text encoder LoRAs' peak learning rate; unset: the same as learning_rate.")})
    lr_schedule: str = field(default="constant", metadata={"help": (
        "After warmup, constant, or cosine: decaying towards 0 over the run.")})
    warmup_steps: int = field(default=0, metadata={"help": (
        "Steps over which the learning rate rises linearly to its peak (0: no warmup).")})
    steps: int | None = field(default=None, metadata={"help": "Optimizer steps to train; set this or epochs."})
    epochs: int | None = field(default=None, metadata={"help": "Passes over the dataset; set this or steps."})
    batch_size: int = field(default=1, metadata={"help": "Images per micro-batch, in each process."})
    gradient_accumulation: int = field(default=1, metadata={"help": (
        "Micro-batches whose gradients add up to one optimizer step.")})
    max_grad_norm: float = field(default=1.0, metadata={"help": (
        "Clip the LoRA gradients' norm to this before each step (0: no clipping).")})
    snr_gamma: float | None = field(default=None, metadata={"help": (
        "Min-SNR loss weighting's gamma (Hang et al. 2023), e.g. 5; unset: plain MSE.")})
    min_timestep: int = field(default=0, metadata={"help": (
        "The lowest noise timestep a step draws (kohya's min_timestep). With max_timestep it trains the LoRA only "
        "at the noise levels where it will act: a LoRA composed from 0.6 of 15 DPM-Solver++ steps on the toy "
        "base acts at timesteps 400 and below.")})
    max_timestep: int | None = field(default=None, metadata={"help": (
        "One past the highest noise timestep a step draws (kohya's max_timestep: timesteps are drawn from "
        "[min_timestep, max_timestep)); unset: the base scheduler's num_train_timesteps, 1000 on SD.")})
    optimizer: str = field(default="adamw", metadata={"help": (
        "adamw, or adamw8bit (bitsandbytes, GPU only), which keeps Adam's moments in 8 bits.")})
    mixed_precision: str = field(default="no", metadata={"help": (
        "no, fp16 (GPU only) or bf16 compute; the LoRA factors stay fp32.")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "Recompute activations in the backward pass: less memory, slower steps.")})
    quantize: str = field(default="nf4", metadata={"help": (
        "How the frozen base is stored: nf4 (4-bit, as QLoRA), int8, or none.")})
    quantize_convs: bool = field(default=True, metadata={"help": (
        "Quantize the base's convolutions too, not only its linear layers.")})
    dtype: str | None = field(default=None, metadata={"help": (
        "The frozen base's precision (its compute precision when quantized): fp32, fp16 or bf16; unset: what "
        "fits the device (fp32 on a CPU for bases up to a quarter of its memory, else bf16; bf16 on GPUs "
        "that have it).")})
    seed: int = field(default=0, metadata={"help": (
        "Seeds every random draw (initial A, batches, noise, timesteps, dropout), so a run repeats exactly.")})
    # What to write.
    output: str | None = field(default=None, metadata={"help": "The run's folder; unset: runs/<name>."})
    name: str | None = field(default=None, metadata={"help": (
        "The adapter's name: <output>/<name>.safetensors; unset: the recipe file's name, else the output "
        "folder's, else lora.")})
    format: str = field(default=DEFAULT_FORMAT, metadata={"help": (
        "The adapter file's naming: kohya (what A1111, ComfyUI, kohya and diffusers all load) or diffusers "
        "(peft's names, which ComfyUI skips for the UNet's attention).")})
    sample_every: int = field(default=0, metadata={"help": (
        "Render sample_prompts every N steps during the run (0: none during it).")})
    final_samples: bool = field(default=True, metadata={"help": (
        "Render the sample grid once more at the end; off for a short run on a large base, where the grid "
        "takes longer than the training.")})
    sample_prompts: list[str] = field(default_factory=list, metadata={"help": (
        "The prompts of the sample grids; empty: the trigger alone, else the first caption.")})
    sample_steps: int | None = field(default=None, metadata={"help": (
        "Denoising steps for the samples; unset: the base's default.")})
    checkpoint_every: int = field(default=0, metadata={"help": (
        "Write a checkpoint every N steps, for --resume (0: no checkpoints).")})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many of the latest checkpoints to keep."})
    log_every: int = field(default=1, metadata={"help": "Write a train_log.jsonl row every N steps."})

    def __post_init__(self):
        choices = {"lr_schedule": LR_SCHEDULES, "optimizer": OPTIMIZERS, "mixed_precision": MIXED_PRECISION,
                   "quantize": QUANTIZE_MODES, "format": FORMATS, "dtype": DTYPES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed and (key, getattr(self, key)) != ("dtype", None):
                raise RecipeError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("rank", "batch_size", "gradient_accumulation", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key}: must be at least 1, got {getattr(self, key)}")
        if self.orthogonal_slot is not None and self.orthogonal_slot_from_name:
            raise RecipeError(f"orthogonal_slot {self.orthogonal_slot} and orthogonal_slot_from_name: give a slot "
                              "number or take one from the name, not both")
        if self.orthogonal_slot is not None and self.orthogonal_slot < 0:
            raise RecipeError(f"orthogonal_slot: must be 0 or more, got {self.orthogonal_slot}; leave it out to "
                              "train A as usual")
        for key in ("warmup_steps", "sample_every", "checkpoint_every", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key}: must not be negative, got {getattr(self, key)}")
        for key, unset in UNSET.items():
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise RecipeError(f"{key}: must be positive, got {value}; leave {key} out {unset}")
        for key in ("output", "name"):
            if getattr(self, key) == "":
                raise RecipeError(f"{key}: empty; leave {key} out {UNSET_NAMES[key]}")
        if self.min_timestep < 0:
            raise RecipeError(f"min_timestep: must not be negative, got {self.min_timestep}")
        if self.max_timestep is not None and self.min_timestep >= self.max_timestep:
            raise RecipeError(f"min_timestep {self.min_timestep} and max_timestep {self.max_timestep}: timesteps "
                              "are drawn from [min_timestep, max_timestep), so min_timestep must be below it")
        if self.learning_rate <= 0:
            raise RecipeError(f"learning_rate: must be positive, got {self.learning_rate}")
        if not 0 <= self.masked_loss_weight <= 1:
            raise RecipeError(f"masked_loss_weight: must be in [0, 1], got {self.masked_loss_weight}")
        if not self.masked_prior_preservation_weight >= 0:
            raise RecipeError(f"masked_prior_preservation_weight: must be ≥ 0, got "
                              f"{self.masked_prior_preservation_weight}")
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not 0 <= self.caption_dropout < 1:
            raise RecipeError(f"caption_dropout: must be in [0, 1), got {self.caption_dropout}")
        if self.resolution is not None and self.resolution % 8:
            raise RecipeError(f"resolution: must be a multiple of 8 (the VAE's factor), got {self.resolution}")
        if self.steps is None and self.epochs is None:
            raise RecipeError("steps or epochs: set one of them")
        if self.steps is not None and self.epochs is not None:
            raise RecipeError(f"steps ({self.steps}) and epochs ({self.epochs}): set only one of them")
        if not self.dataset:
            raise RecipeError("dataset: missing (a folder of images with .txt captions, or with a metadata.jsonl)")
        if not self.targets:
            raise RecipeError("targets: name at least one UNet module, e.g. " + ", ".join(UNET_ATTENTION))
        if self.train_text_encoder and not self.text_encoder_targets:
            raise RecipeError("text_encoder_targets: empty while train_text_encoder is true")
        if "{caption}" not in self.caption_template:
            raise RecipeError(f"caption_template: {self.caption_template!r} has no {{caption}}")
        try:
            self.caption_template.format(trigger="", caption="")
        except (KeyError, IndexError, ValueError) as e:
            raise RecipeError(f"caption_template: {self.caption_template!r}: only {{trigger}} and {{caption}} "
                              f"may appear ({e})") from None

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank

    @property
    def effective_text_encoder_learning_rate(self) -> float:
        return self.learning_rate if self.text_encoder_learning_rate is None else self.text_encoder_learning_rate

    @property
    def adapter_name(self) -> str:
        if self.name is not None:
            return self.name
        if self.output is not None:
            return os.path.basename(os.path.abspath(self.output)) or "lora"
        return "lora"

    @property
    def run_folder(self) -> Path:
        return Path(self.output) if self.output is not None else Path("runs") / self.adapter_name

    def as_dict(self) -> dict:
        """The recipe as the run's outputs record it: alpha, the text encoder's rate, name and output as used.
        resolution and sample_steps stay None (the base's own) unless set; the base is recorded with them."""
        values = asdict(self)
        values.update(alpha=self.effective_alpha, text_encoder_learning_rate=self.effective_text_encoder_learning_rate,
                      name=self.adapter_name, output=str(self.run_folder))
        return values


KEYS = {f.name: f for f in fields(TrainRecipe)}
_HINTS = typing.get_type_hints(TrainRecipe)


def value_type(key: str) -> type:
    """The type of a key's value when it is set: int for `steps: int | None`, list for `list[str]`."""
    hint = _HINTS[key]
    if is_optional(key):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return typing.get_origin(hint) or hint


def is_optional(key: str) -> bool:
    return type(None) in typing.get_args(_HINTS[key])


def help_of(key: str) -> str:
    return KEYS[key].metadata["help"]


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file's keys and values, its paths made relative to where the command runs."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    check_keys(values, str(path))
    for key in PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value and _is_local_path(key, value):
            values[key] = os.path.normpath(path.parent / value)
    values.setdefault("name", path.stem)
    return values


def _is_local_path(key: str, value: str) -> bool:
    if key != "base":
        return True
    return value != "toy" and (value.startswith(".") or value.endswith(".safetensors") or "/" not in value
                               or Path(value).exists())


def check_keys(values: dict, where: str) -> None:
    for key, value in values.items():
        if key not in KEYS:
            raise RecipeError(f"{where}: unknown key {key!r}{did_you_mean(key, KEYS)}")
        _check_type(key, value, where)


def _check_type(key: str, value, where: str) -> None:
    if value is None and is_optional(key):  # from Python callers; TOML has no None
        return
    expected = value_type(key)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise RecipeError(f"{where}: {key} must be a list of strings, got {value!r}")
        return
    if type(value) is not expected:
        raise RecipeError(f"{where}: {key} must be {expected.__name__}, got {value!r}")


def make_recipe(path: str | os.PathLike | None, overrides: dict) -> TrainRecipe:
    """The recipe at `path` (if any) with `overrides` (e.g. from command-line flags) on top."""
    values = read_recipe(path) if path is not None else {}
    check_keys(overrides, "option")
    values.update(overrides)
    return TrainRecipe(**values)
