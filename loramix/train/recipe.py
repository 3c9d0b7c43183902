"""Training recipes: a TOML file mapped onto one dataclass, every key also a command-line flag.

    loramix train recipes/mustache.toml --rank 8 --steps 300

Unknown keys are errors that suggest the closest known key; values are checked in `__post_init__` with
messages that say what to choose instead. Paths in a recipe are relative to the recipe file.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import tomllib

from loramix.choices import FORMATS, QUANTIZE_MODES
from loramix.errors import RecipeError, did_you_mean

UNET_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULES = ("constant", "cosine")
PATH_KEYS = ("dataset", "output", "base")


@dataclass
class TrainRecipe:
    # What to learn from: a folder of images with same-name .txt captions, or one with a metadata.jsonl.
    dataset: str = ""
    trigger: str = ""  # a rare word the LoRA ties its attribute to; put in every caption by caption_template
    caption_template: str = "{trigger} {caption}"
    # The frozen base: "toy" (shipped), a diffusers pipeline folder, a single-file .safetensors or a hub id.
    base: str = "toy"
    resolution: int = 0  # 0: the base's own (64 for the toy base, 512 for SD 1.5, 1024 for SDXL)
    skip_bad_images: bool = False  # false: an unreadable image stops the run; true: it is left out, and named
    flip: bool = False  # random horizontal flips: doubles the data when the attribute is symmetric
    # What to train.
    targets: list[str] = field(default_factory=lambda: list(UNET_ATTENTION))
    train_text_encoder: bool = False
    text_encoder_targets: list[str] = field(default_factory=lambda: list(TEXT_ENCODER_ATTENTION))
    rank: int = 8
    alpha: float = 0.0  # 0: equal to rank, so the update's scale α/r is 1
    dropout: float = 0.0
    # How.
    learning_rate: float = 1e-4
    text_encoder_learning_rate: float = 0.0  # 0: the same as learning_rate
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    steps: int = 0  # 0: from epochs
    epochs: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    snr_gamma: float = 0.0  # min-SNR loss weighting (Hang et al. 2023); 0: plain MSE
    optimizer: str = "adamw"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    quantize: str = "nf4"
    quantize_convs: bool = True
    seed: int = 0
    # What to write.
    output: str = ""  # the run's folder; "" → runs/<recipe name>
    name: str = ""  # the adapter's name; "" → the recipe file's name
    format: str = "diffusers"
    sample_every: int = 0  # render sample_prompts every N steps (0: only at the end)
    sample_prompts: list[str] = field(default_factory=list)  # [] → "<trigger> a face" style: the trigger alone
    sample_steps: int = 0  # 0: the base's default
    checkpoint_every: int = 0  # 0: no checkpoints, so no resume
    keep_checkpoints: int = 2
    log_every: int = 1

    def __post_init__(self):
        self.alpha = float(self.alpha or self.rank)
        choices = {"lr_schedule": LR_SCHEDULES, "optimizer": OPTIMIZERS, "mixed_precision": MIXED_PRECISION,
                   "quantize": QUANTIZE_MODES, "format": FORMATS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise RecipeError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("rank", "batch_size", "gradient_accumulation", "keep_checkpoints", "log_every"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("resolution", "steps", "epochs", "warmup_steps", "sample_every", "sample_steps",
                    "checkpoint_every", "snr_gamma", "text_encoder_learning_rate", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key}: must not be negative, got {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise RecipeError(f"learning_rate: must be positive, got {self.learning_rate}")
        if self.alpha <= 0:
            raise RecipeError(f"alpha: must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.resolution and self.resolution % 8:
            raise RecipeError(f"resolution: must be a multiple of 8 (the VAE's factor), got {self.resolution}")
        if not self.steps and not self.epochs:
            raise RecipeError("steps or epochs: set one of them")
        if self.steps and self.epochs:
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
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict:
        return asdict(self)


KEYS = {f.name: f for f in fields(TrainRecipe)}


def default_of(key: str):
    spec = KEYS[key]
    return spec.default_factory() if spec.default is MISSING else spec.default


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
    expected = type(default_of(key))
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
    if not values.get("name"):
        values["name"] = Path(values.get("output") or "lora").name
    recipe = TrainRecipe(**values)
    if not recipe.output:
        recipe.output = os.path.join("runs", recipe.name)
    return recipe
