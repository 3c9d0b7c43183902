"""The judge: a small classifier that says whether an image shows a face, a mustache, lipstick, glasses.

It turns "did the LoRA teach a mustache?" into a number. It learns from the face generator's own images and
their true labels, plus images that are not faces (plain backgrounds, shapes in face colours, faces cut into
shuffled tiles) so that "face" means a face and not a skin-coloured blob, and broken faces (warped, smeared,
two faces blended, large parts erased or cut off) so that "face" means a whole, well-drawn one: an
over-weighted LoRA melts a face long before it stops being skin-coloured. Given the toy base's VAE round
trip, half of each batch is shown as the VAE gives it back, since the judge must read the model's blurrier
outputs.

    judge = load_judge()
    judge.verdicts(images)   # (N, 4) booleans: face, mustache, lipstick, glasses
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from loramix.errors import JudgeError, first_line
from loramix.toy import face_spec, faces
from loramix.toy.judge_negatives import BREAKS, SIZE, broken_face, non_face
from loramix.util.atomic import atomic_path
from loramix.util.imagefile import open_image

ATTRIBUTES = ("face", "mustache", "lipstick", "glasses")
EVALUATION_SEEDS = 10**9  # evaluation images come from seeds at or above this, training ones from below it
Roundtrip = Callable[[torch.Tensor], torch.Tensor]


class JudgeNet(nn.Module):
    """(B, 3, H, W) in [-1, 1] → (B, 4) logits for face, mustache, lipstick, glasses.

    Four stride-2 conv blocks take 64 pixels to 4; the head then reads the 4×4 map position by position
    rather than pooling it, because a face is parts in their places: eyes above a mouth, a mustache between.
    """

    def __init__(self, width: int = 24):
        super().__init__()
        channels = (3, width, 2 * width, 4 * width, 4 * width)
        blocks = []
        for c_in, c_out in zip(channels, channels[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels[-1] * 4 * 4, len(ATTRIBUTES)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(images))  # (B, 4C, 4, 4) → (B, 4)


# --- images and labels ---------------------------------------------------------------------------------------

def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images → (B, 3, 64, 64) in [-1, 1]; other sizes are resized as the judge resizes tensors."""
    tensors = []
    for image in images:
        image = image.convert("RGB")
        width, height = image.size
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
        tensor = pixels.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1  # (1, 3, H, W)
        if (height, width) != (SIZE, SIZE):
            tensor = F.interpolate(tensor, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        tensors.append(tensor)
    return torch.cat(tensors) if tensors else torch.empty(0, 3, SIZE, SIZE)


UNKNOWN = float("nan")  # a label not trained on: what a broken face shows of an attribute is nobody's call


def labelled_images(seeds: list[int], non_face_share: float,
                    broken_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per seed, all drawn from the seed: a face with each attribute present with probability ½,
    or (a `non_face_share` of them) a non-face, or (a `broken_share`) a broken face, whose attribute labels
    are UNKNOWN. Returns (N, 3, 64, 64) images and (N, 4) labels."""
    if non_face_share + broken_share > 1:
        raise JudgeError(f"non-face share {non_face_share:g} and broken share {broken_share:g} add up to more than 1")
    plans = []
    for seed in seeds:
        rng = random.Random(f"judge/{seed}")
        flags = [rng.random() < 0.5 for _ in range(3)]
        draw = rng.random()  # one draw for both shares, so broken_share=0 gives the images it always gave
        kind = "non-face" if draw < non_face_share else "broken" if draw < non_face_share + broken_share else "face"
        plans.append((face_spec.sample_face(seed, *flags), flags, kind))
    drawn = faces.draw_faces([spec for spec, _, _ in plans])
    images = to_tensor([non_face(seed, face) if kind == "non-face" else face
                        for seed, face, (_, _, kind) in zip(seeds, drawn, plans)])
    labels = []
    for i, (seed, (_, flags, kind)) in enumerate(zip(seeds, plans)):
        if kind == "broken":
            other = images[(i + 1) % len(images)] if len(images) > 1 else images[i].flip(-1)
            images[i] = broken_face(images[i], other, seed)
        labels.append({"non-face": [0.0] * 4, "broken": [0.0, UNKNOWN, UNKNOWN, UNKNOWN],
                       "face": [1.0, *map(float, flags)]}[kind])
    return images, torch.tensor(labels)


def training_seeds(count: int, seed: int) -> list[int]:
    """Face seeds for training run `seed`: below EVALUATION_SEEDS, so never an evaluation face."""
    start = (seed * 7_919_993) % EVALUATION_SEEDS  # runs with nearby seeds start far apart
    return [(start + i) % EVALUATION_SEEDS for i in range(count)]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small changes the model's outputs show: shifts of up to 3 pixels, brightness, contrast and colour,
    gaussian blur of random strength (its outputs are soft), and noise."""
    batch = len(images)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, *shape, generator=generator)

    padded = F.pad(images, (3, 3, 3, 3), mode="replicate")
    dx, dy = torch.randint(0, 7, (2, batch), generator=generator).tolist()
    images = torch.stack([padded[i, :, y : y + SIZE, x : x + SIZE] for i, (x, y) in enumerate(zip(dx, dy))])
    images = _gaussian_blur(images, uniform(0.0, 1.4))
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * uniform(0.8, 1.2, 1, 1, 1) + mean + uniform(-0.12, 0.12, 1, 1, 1)
    images = images + uniform(-0.06, 0.06, 3, 1, 1)
    noise = uniform(0.0, 0.05, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return (images + noise).clamp(-1, 1)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur image i with a gaussian of standard deviation sigmas[i] pixels (0: unchanged)."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(-3, 4, dtype=images.dtype)
    kernels = torch.exp(-offsets**2 / (2 * sigmas.clamp(min=1e-3)[:, None] ** 2))  # (B, 7)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B·C, 7)
    flat = F.pad(images.reshape(1, batch * channels, height, width), (3, 3, 3, 3), mode="replicate")
    flat = F.conv2d(flat, kernels[:, None, None, :], groups=batch * channels)  # along rows
    flat = F.conv2d(flat, kernels[:, None, :, None], groups=batch * channels)  # along columns
    return flat.reshape(batch, channels, height, width)


# --- training and evaluation ---------------------------------------------------------------------------------

@dataclass
class JudgeTraining:
    examples: int = 8_000  # distinct generator images; augmentation varies them at every step
    non_face_share: float = 0.3
    broken_share: float = 0.25  # warped, smeared, blended, erased or cut faces: "face" is 0 for them
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    # With a roundtrip: how many of the images get one (at ~8 ms each, the VAE is the costly part), and the
    # share of each batch drawn from those round trips.
    roundtrip_examples: int = 8_000
    roundtrip_share: float = 0.5

    def __post_init__(self):
        if self.examples < 1:
            raise JudgeError(f"judge training: examples must be at least 1, got {self.examples}")
        for name in ("non_face_share", "broken_share", "roundtrip_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise JudgeError(f"judge training: {name} must be in [0, 1], got {getattr(self, name)}")


def train_judge(steps: int, batch_size: int = 128, seed: int = 0, roundtrip: Roundtrip | None = None,
                progress: bool = False, config: JudgeTraining | None = None) -> JudgeNet:
    """A judge trained from scratch for `steps` steps on generator images made from `seed`.

    The images are drawn once (drawing is the slow part); every step shows a fresh augmentation of a batch of
    them. With `roundtrip`, each image's round trip is computed once too, and a `roundtrip_share` of each batch
    is shown through it.
    """
    config = config or JudgeTraining()
    if steps < 1 or batch_size < 1:
        raise JudgeError(f"judge training: steps and batch_size must be at least 1, got {steps} and {batch_size}")
    images, labels = labelled_images(training_seeds(config.examples, seed), config.non_face_share,
                                     config.broken_share)
    round_tripped = _in_chunks(roundtrip, images[: config.roundtrip_examples]) if roundtrip is not None else None
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # initial weights and dropout draw from the global generator: seed it here
        torch.manual_seed(seed)
        judge = _fit(JudgeNet(), images, labels, round_tripped, steps, batch_size, generator, config, progress)
    return judge.eval()


def _fit(judge: JudgeNet, images: torch.Tensor, labels: torch.Tensor, round_tripped: torch.Tensor | None,
         steps: int, batch_size: int, generator: torch.Generator, config: JudgeTraining, progress: bool) -> JudgeNet:
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(judge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, steps // 10)

    def factor(step: int) -> float:  # linear warmup, then cosine down to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    judge.train()
    for _ in tqdm(range(steps), disable=not progress, desc="training judge"):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        batch = images[index]
        if round_tripped is not None:  # a share of the batch as the VAE gives it back (the first images' trips)
            through = torch.rand(batch_size, generator=generator) < config.roundtrip_share
            index[through] = torch.randint(0, len(round_tripped), (int(through.sum()),), generator=generator)
            batch[through] = round_tripped[index[through]]
        targets = labels[index]
        known = ~targets.isnan()  # a broken face teaches "not a face" and nothing about its attributes
        losses = F.binary_cross_entropy_with_logits(judge(augment(batch, generator)), targets.nan_to_num(0.0),
                                                    reduction="none")
        loss = (losses * known).sum() / known.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge


def _in_chunks(function: Roundtrip, images: torch.Tensor, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([function(images[i : i + size]) for i in range(0, len(images), size)])


def evaluate_judge(judge: JudgeNet | Judge, count: int = 1000, seed: int = 0,
                   roundtrip: Roundtrip | None = None) -> dict[str, float]:
    """Accuracy per attribute on `count` fresh generator images (seeds never used in training), half of them
    faces with random attributes, half non-faces; passed through `roundtrip` first when it is given."""
    net = judge.net if isinstance(judge, Judge) else judge
    start = EVALUATION_SEEDS + seed * 10_000_000
    images, labels = labelled_images(list(range(start, start + count)), non_face_share=0.5)
    if roundtrip is not None:
        images = _in_chunks(roundtrip, images)
    predicted = Judge(net).scores(images) > 0.5
    return {name: float((predicted[:, i] == labels[:, i].bool()).float().mean()) for i, name in enumerate(ATTRIBUTES)}


def evaluate_broken(judge: JudgeNet | Judge, count: int = 700, seed: int = 0,
                    roundtrip: Roundtrip | None = None) -> dict[str, float]:
    """How strict the face output is, on `count` fresh generator faces (seeds never used in training) with
    random attributes: the share of them read as a face ("clean accepted"), and the share rejected once
    broken, each face broken every one of the BREAKS ways in turn (per kind, and "broken rejected" overall)."""
    net = judge.net if isinstance(judge, Judge) else judge
    start = EVALUATION_SEEDS + seed * 10_000_000 + 5_000_000  # apart from evaluate_judge's images
    seeds = list(range(start, start + count))
    images, _ = labelled_images(seeds, non_face_share=0.0)
    others = images.roll(1, dims=0)
    read = Judge(net)

    def face_share(batch: torch.Tensor) -> float:
        batch = _in_chunks(roundtrip, batch) if roundtrip is not None else batch
        return float((read.scores(batch)[:, 0] > 0.5).float().mean())

    figures = {"clean accepted": face_share(images)}
    for kind in BREAKS:
        broken = torch.stack([broken_face(face, other, seed, kind) for face, other, seed in zip(images, others, seeds)])
        figures[kind] = 1 - face_share(broken)
    figures["broken rejected"] = sum(figures[kind] for kind in BREAKS) / len(BREAKS)
    return figures


# --- the shipped judge ---------------------------------------------------------------------------------------

def judge_path() -> Path:
    return Path(str(resources.files("loramix") / "weights" / "judge.safetensors"))


@dataclass
class Judge:
    """A trained JudgeNet, ready to read images."""

    net: JudgeNet

    def scores(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """(N, 4) probabilities of face, mustache, lipstick, glasses."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise JudgeError(f"images: expected a (N, 3, H, W) tensor in [-1, 1], got shape {tuple(images.shape)}")
            tensor = images.float()
        else:
            tensor = to_tensor(images)
        self.net.eval()
        with torch.inference_mode():
            chunks = [torch.sigmoid(self.net(tensor[i : i + 256])) for i in range(0, len(tensor), 256)]
        return torch.cat(chunks) if chunks else torch.empty(0, len(ATTRIBUTES))

    def verdicts(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """(N, 4) booleans: does each image show a face, mustache, lipstick, glasses?"""
        return self.scores(images) > 0.5


def summarize(verdicts: torch.Tensor) -> dict[str, float]:
    """The fraction of images showing each attribute."""
    if len(verdicts) == 0:
        raise JudgeError("no verdicts to summarize")
    return {name: float(verdicts[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}


def save_judge(judge: JudgeNet | Judge, path: str | os.PathLike) -> None:
    """Write the judge's weights as fp16 safetensors (half the size; its verdicts do not change)."""
    from safetensors.torch import save_file

    net = judge.net if isinstance(judge, Judge) else judge
    state = {name: value.detach().half().contiguous() if value.is_floating_point() else value.contiguous()
             for name, value in net.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={"attributes": ",".join(ATTRIBUTES)})


def load_judge(path: str | os.PathLike | None = None) -> Judge:
    """The judge at `path`, or the one shipped in the package."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else judge_path()
    if not path.is_file():
        raise JudgeError(f"{path}: no judge weights there; `loramix build-base --judge-only` trains them")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise JudgeError(f"{path}: not a readable safetensors file ({e})") from None
    net = JudgeNet()
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise JudgeError(f"{path}: not weights of this judge ({first_line(e, limit=None)})") from e
    return Judge(net.eval())


def build_judge(out_path: str | os.PathLike, roundtrip: Roundtrip | None, steps: int = 1_500, seed: int = 0,
                progress: bool = True, evaluation_count: int = 1_000) -> dict:
    """Train a judge, save it at `out_path`, and report its accuracy per attribute on fresh generator images
    and on the same images through `roundtrip`, and how many broken faces it fails (a quarter as many faces,
    each broken every way)."""
    judge = train_judge(steps, seed=seed, roundtrip=roundtrip, progress=progress)
    save_judge(judge, out_path)
    figures = {"steps": steps, "parameters": sum(p.numel() for p in judge.parameters()),
               "generator": evaluate_judge(judge, evaluation_count, seed=seed),
               "broken": evaluate_broken(judge, evaluation_count // 4, seed=seed)}
    if roundtrip is not None:
        figures["roundtrip"] = evaluate_judge(judge, evaluation_count, seed=seed, roundtrip=roundtrip)
        figures["broken roundtrip"] = evaluate_broken(judge, evaluation_count // 4, seed=seed, roundtrip=roundtrip)
    return figures


def read_images(paths: list[Path]) -> list[Image.Image]:
    """RGB images from files; an unreadable one is a JudgeError naming it."""
    return [open_image(path, error=JudgeError).convert("RGB") for path in paths]
