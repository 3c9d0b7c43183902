"""The judge: a small classifier that says whether an image shows a face, a mustache, lipstick, glasses.

It turns "did the LoRA teach a mustache?" into a number. It is trained on generator images with their true
labels, plus images that are not faces (backgrounds, blobs of face colours, faces cut into shuffled tiles)
so that "face" means a face, and, half of each batch, on images passed through the toy base's VAE, since it
must read the model's own blurrier outputs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from loramix.atomic import atomic_path
from loramix.errors import LoramixError
from loramix.faces import BACKGROUNDS, HAIR_COLOURS, SKIN_TONES, FaceSpec, draw_faces, sample_face

ATTRIBUTES = ("face", "mustache", "lipstick", "glasses")
SIZE = 64
EVALUATION_SEEDS = 10**9  # evaluation faces come from seeds at or above this; training ones from below


class JudgeNet(nn.Module):
    """Four strided conv layers and a linear head: (B, 3, 64, 64) in [-1, 1] → (B, 4) logits."""

    def __init__(self, width: int = 32):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers)  # 64 → 4 pixels a side
        self.head = nn.Linear(channels[-1], len(ATTRIBUTES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        return self.head(self.features(images).mean(dim=(2, 3)))


# --- training data -------------------------------------------------------------------------------------------

def labelled_faces(seeds: list[int]) -> tuple[list[FaceSpec], torch.Tensor]:
    """Faces whose attributes are each present with probability ½ (drawn from the seed), and their labels."""
    specs, labels = [], []
    for seed in seeds:
        rng = random.Random(seed ^ 0x5EED)
        flags = [rng.random() < 0.5 for _ in range(3)]
        specs.append(sample_face(seed, *flags))
        labels.append([1.0, *map(float, flags)])
    return specs, torch.tensor(labels)


def non_face(seed: int, face: Image.Image) -> Image.Image:
    """An image with no face: a plain background, blobs of skin and hair colours, or `face` in shuffled tiles."""
    rng = random.Random(seed)
    kind = rng.randrange(3)
    if kind == 2:
        tile = SIZE // 4
        tiles = [face.crop((x, y, x + tile, y + tile)) for y in range(0, SIZE, tile) for x in range(0, SIZE, tile)]
        rng.shuffle(tiles)
        image = Image.new("RGB", (SIZE, SIZE))
        for i, piece in enumerate(tiles):
            image.paste(piece, ((i % 4) * tile, (i // 4) * tile))
        return image
    image = Image.new("RGB", (SIZE, SIZE), rng.choice(list(BACKGROUNDS.values())))
    if kind == 1:
        draw = ImageDraw.Draw(image)
        colours = [*SKIN_TONES.values(), *HAIR_COLOURS.values()]
        for _ in range(rng.randint(1, 5)):
            x, y, w, h = (rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(4, 36), rng.uniform(4, 36))
            draw.ellipse((x - w / 2, y - h / 2, x + w / 2, y + h / 2), fill=rng.choice(colours))
    return image


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images → (B, 3, 64, 64) in [-1, 1]."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.BILINEAR)
        arrays.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3))
    return torch.stack(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1


def make_examples(count: int, first_seed: int, non_face_share: float = 0.25):
    """`count` labelled images: faces with random attributes, and a share of non-faces (all labels 0)."""
    seeds = list(range(first_seed, first_seed + count))
    specs, labels = labelled_faces(seeds)
    images = draw_faces(specs)
    rng = random.Random(first_seed)
    for i in range(count):
        if rng.random() < non_face_share:
            images[i] = non_face(seeds[i], images[i])
            labels[i] = 0.0
    return to_tensor(images), labels


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small shifts, brightness and contrast changes, blur of random strength (the model's outputs are soft)
    and noise."""
    batch = images.shape[0]
    shift = torch.randint(-3, 4, (2,), generator=generator).tolist()
    images = torch.roll(images, shifts=shift, dims=(2, 3))
    scale = 1 + 0.2 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    offset = 0.2 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    images = images * scale + offset
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    amount = torch.rand(batch, 1, 1, 1, generator=generator)
    images = images + amount * (blurred - images)
    return (images + 0.03 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def train_judge(steps: int, batch_size: int = 128, seed: int = 0, roundtrip=None, examples: int = 6000,
                progress: bool = False) -> JudgeNet:
    """Train on `examples` generated images (and their VAE round trips when `roundtrip` is given)."""
    from tqdm import tqdm

    images, labels = make_examples(examples, first_seed=seed * examples)
    pools = [images] if roundtrip is None else [images, _in_batches(roundtrip, images)]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        judge = JudgeNet()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    judge.train()
    for _ in tqdm(range(steps), disable=not progress, desc="training judge"):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        source = torch.randint(0, len(pools), (batch_size,), generator=generator)
        batch = torch.stack([pools[s][i] for s, i in zip(source.tolist(), index.tolist())])
        loss = F.binary_cross_entropy_with_logits(judge(augment(batch, generator)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


def _in_batches(function, images: torch.Tensor, size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([function(images[i : i + size]) for i in range(0, len(images), size)])


def evaluate_judge(judge: JudgeNet, count: int = 1000, roundtrip=None) -> dict[str, float]:
    """Accuracy per attribute on fresh generator images (seeds never used in training)."""
    images, labels = make_examples(count, first_seed=EVALUATION_SEEDS, non_face_share=0.2)
    if roundtrip is not None:
        images = _in_batches(roundtrip, images)
    with torch.no_grad():
        predicted = (judge(images) > 0).float()
    return {name: float((predicted[:, i] == labels[:, i]).float().mean()) for i, name in enumerate(ATTRIBUTES)}


# --- the shipped judge ---------------------------------------------------------------------------------------

def judge_path() -> Path:
    return Path(str(resources.files("loramix") / "weights" / "judge.safetensors"))


def save_judge(judge: JudgeNet, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in judge.state_dict().items()}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={"attributes": ",".join(ATTRIBUTES)})


@dataclass
class Judge:
    net: JudgeNet

    def scores(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        """(N, 4) probabilities of face, mustache, lipstick, glasses."""
        tensor = images if isinstance(images, torch.Tensor) else to_tensor(images)
        with torch.no_grad():
            return torch.cat([torch.sigmoid(self.net(tensor[i : i + 256])) for i in range(0, len(tensor), 256)])

    def verdicts(self, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
        return self.scores(images) > 0.5


def load_judge(path: str | os.PathLike | None = None) -> Judge:
    from safetensors.torch import load_file

    path = Path(path) if path is not None else judge_path()
    if not path.is_file():
        raise LoramixError(f"{path}: no judge weights there; `loramix build-base` trains them")
    net = JudgeNet()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return Judge(net.eval())


def summarize(verdicts: torch.Tensor) -> dict[str, float]:
    """The fraction of images showing each attribute."""
    return {name: float(verdicts[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}


def build_judge(output: str | os.PathLike, roundtrip, steps: int = 1500, seed: int = 0,
                progress: bool = False) -> dict[str, dict[str, float]]:
    """Train, save, and report accuracy on fresh generator images and on their VAE round trips."""
    judge = train_judge(steps, seed=seed, roundtrip=roundtrip, progress=progress)
    save_judge(judge, output)
    return {"generator": evaluate_judge(judge), "vae_roundtrip": evaluate_judge(judge, roundtrip=roundtrip),
            "parameters": sum(p.numel() for p in judge.parameters()), "steps": steps}


def read_images(paths: list[Path]) -> list[Image.Image]:
    """RGB images from files; an unreadable one is a LoramixError naming it."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise LoramixError(f"{path}: not a readable image ({e})") from None
    return images

