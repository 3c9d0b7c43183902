"""Training the toy base from scratch: the VAE on face images, then the UNet and text encoder on its latents.

    loramix build-base            # the shipped weights: about an hour on a 2-core CPU

The UNet and the text encoder learn from faces that never show a mustache, lipstick or glasses: those are
for LoRAs to teach. The VAE, the image codec, first learns plain faces with random shapes painted over them,
and last learns to keep the attributes through the round trip while plain faces keep their latents, so the
latent space the UNet knows stays the same. Every step is seeded, so the same command rebuilds the same
model (to float noise between machines).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from loramix.errors import LoramixError
from loramix.toy.face_spec import CAPTION_WORDS, caption, sample_face
from loramix.toy.faces import draw_faces


@dataclass
class BuildConfig:
    images: int = 12_000  # distinct faces; the UNet sees each about 17 times
    vae_steps: int = 3_000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6  # SD's VAE keeps KL tiny: latents stay sharp, their scale is fixed afterwards
    vae_shapes: float = 0.5  # share of the VAE's training faces with random coloured shapes painted over them
    # The posterior's starting width. diffusers starts it at 1, as wide as the latents themselves, and the
    # decoder then learns to draw from noisy latents, blurring every small part; the KL term may widen it.
    vae_initial_std: float = 0.05
    unet_steps: int = 3_200
    unet_batch: int = 64
    unet_lr: float = 5e-4
    text_encoder_lr: float = 2e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional prediction that guidance needs
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): same quality in fewer steps
    ema_decay: float = 0.999
    warmup_steps: int = 200
    attribute_steps: int = 900
    attribute_images: int = 4_000
    attribute_lr: float = 5e-4
    anchor_weight: float = 1.0  # how firmly plain faces' latents hold still while the VAE learns attributes
    # Extra weight on the pixels where a face's attributes differ from its plain twin, in both images: the
    # few mouth pixels that tell lipstick from bare lips otherwise weigh almost nothing in a 64×64 loss.
    attribute_focus: float = 4.0
    judge_steps: int = 1_500
    seed: int = 0

    def __post_init__(self):
        for name in ("images", "vae_steps", "vae_batch", "unet_steps", "unet_batch"):
            if getattr(self, name) < 1:
                raise LoramixError(f"build config: {name} must be at least 1, got {getattr(self, name)}")
        if self.attribute_steps < 0 or self.attribute_images < 1:
            raise LoramixError("build config: attribute_steps must be at least 0 and attribute_images at least 1")
        if not 0 < self.vae_initial_std <= 1:
            raise LoramixError(f"build config: vae_initial_std must be in (0, 1], got {self.vae_initial_std}")
        if self.attribute_focus < 0:
            raise LoramixError(f"build config: attribute_focus must be at least 0, got {self.attribute_focus}")
        if not 0 <= self.vae_shapes <= 1:
            raise LoramixError(f"build config: vae_shapes must be in [0, 1], got {self.vae_shapes}")
        if not 0 <= self.caption_dropout < 1:
            raise LoramixError(f"build config: caption_dropout must be in [0, 1), got {self.caption_dropout}")


def face_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`count` plain faces as a (count, 3, 64, 64) float tensor in [-1, 1], with their captions."""
    from loramix.toy.judge import to_tensor

    specs = [sample_face(seed * 10_000_000 + i) for i in range(count)]
    return to_tensor(draw_faces(specs)), [caption(spec) for spec in specs]


def _cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def paint_shapes(images: torch.Tensor, share: float, generator: torch.Generator, most: int = 6) -> torch.Tensor:
    """Paint 1 to `most` ellipses of random colour and size (2 to 16 pixels across each way) anywhere on a
    `share` of `images` ((B, 3, H, W) in [-1, 1]).

    A VAE that only ever sees plain faces learns to spend nothing on what never varies there, such as the
    colour of a mouth, and then turns a red mouth back into a bare one. SD's VAE saw every kind of image;
    shapes in every colour teach the toy's to keep whatever is drawn, without it ever seeing an attribute.
    """
    batch, _, height, width = images.shape
    ys = torch.arange(height, dtype=images.dtype).view(1, height, 1)
    xs = torch.arange(width, dtype=images.dtype).view(1, 1, width)
    chosen = torch.rand(batch, generator=generator) < share
    counts = torch.randint(1, most + 1, (batch,), generator=generator) * chosen  # shapes per image, 0 if not chosen
    painted = images.clone()
    for k in range(most):
        cx, cy, rx, ry = torch.rand(4, batch, 1, 1, generator=generator)
        colour = torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1
        inside = ((xs - cx * width) / (1 + 7 * rx)) ** 2 + ((ys - cy * height) / (1 + 7 * ry)) ** 2 < 1  # (B, H, W)
        painted = torch.where((inside & (counts > k).view(batch, 1, 1))[:, None], colour, painted)
    return painted


def _reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE + ½·L1, as a weighted mean over pixels when `weight` ((B, 1, H, W)) is given."""
    if weight is None:
        return F.mse_loss(reconstruction, images) + 0.5 * F.l1_loss(reconstruction, images)
    error = reconstruction - images
    return ((error**2 + 0.5 * error.abs()) * weight).mean() / weight.mean()


def train_vae(vae, images: torch.Tensor, config: BuildConfig, progress: bool = False) -> list[float]:
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(config.seed + 1)
    with torch.no_grad():  # quant_conv's second half of channels is the posterior's log-variance
        vae.quant_conv.bias[vae.config.latent_channels:] = 2 * math.log(config.vae_initial_std)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, min(config.warmup_steps, config.vae_steps // 10), config.vae_steps)
    vae.train()
    losses = []
    for _ in tqdm(range(config.vae_steps), disable=not progress, desc="training VAE"):
        batch = images[torch.randint(0, len(images), (config.vae_batch,), generator=generator)]
        batch = paint_shapes(batch, config.vae_shapes, generator)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = (_reconstruction_loss(reconstruction, batch)
                + config.vae_kl_weight * posterior.kl().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    return losses


def attribute_faces(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces each showing a mustache, lipstick and glasses with probability ½, and the same faces plain."""
    import random

    from loramix.toy.judge import to_tensor

    rng = random.Random(f"decoder/{seed}")
    face_seeds = [seed * 10_000_000 + 5_000_000 + i for i in range(count)]
    worn = [sample_face(face_seed, rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5)
            for face_seed in face_seeds]
    return to_tensor(draw_faces(worn)), to_tensor(draw_faces([sample_face(s) for s in face_seeds]))


def finetune_vae(vae, worn: torch.Tensor, plain: torch.Tensor, config: BuildConfig,
                 progress: bool = False) -> list[float]:
    """Teach the VAE to keep a mustache, lipstick or glasses through the round trip, while a plain face
    still encodes to the latent the UNet learned.

    A VAE trained on plain faces spends nothing on what never varies there: it encodes a red mouth much
    like a bare one, and its decoder, shown both, hedges and draws every mouth reddish. A LoRA can only
    teach what the VAE keeps, and SD's VAE saw every kind of image. So both halves learn the attributes
    here, while each plain face's latent is held where it was (`anchor_weight`): the UNet and the text
    encoder never meet an attribute, and what they learned still decodes to the same faces.
    """
    from tqdm import tqdm

    anchor, _ = encode_latents(vae, plain)
    changed = ((worn - plain).abs().amax(dim=1, keepdim=True) > 0.05).float()  # (N, 1, H, W): the attributes
    vae.requires_grad_(True)
    generator = torch.Generator().manual_seed(config.seed + 3)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.attribute_lr, weight_decay=0.0)
    vae.train()
    losses = []
    for _ in tqdm(range(config.attribute_steps), disable=not progress, desc="fine-tuning the VAE on attributes"):
        index = torch.randint(0, len(worn), (config.vae_batch // 2,), generator=generator)
        images = torch.cat([worn[index], plain[index]])
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        drift = F.mse_loss(posterior.mean[len(index):], anchor[index])  # plain faces' latents stay put
        focus = 1 + config.attribute_focus * changed[index].repeat(2, 1, 1, 1)
        loss = _reconstruction_loss(reconstruction, images, focus) + config.anchor_weight * drift
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    vae.eval()
    vae.requires_grad_(False)
    return losses


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of every image's latent."""
    means, stds = [], []
    for start in range(0, len(images), batch):
        posterior = vae.encode(images[start : start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_denoiser(unet, text_encoder, tokenizer, latent_mean: torch.Tensor, latent_std: torch.Tensor,
                   captions: list[str], scaling_factor: float, config: BuildConfig,
                   progress: bool = False) -> list[float]:
    """Train the UNet and the text encoder together on noised latents (ε-prediction, SD's schedule)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr
    from tqdm import tqdm

    from loramix.toy.base import SCHEDULER_CONFIG

    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(config.seed + 2)
    optimizer = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": config.unet_lr},
        {"params": text_encoder.parameters(), "lr": config.text_encoder_lr},
    ], weight_decay=1e-2)
    schedule = _cosine_with_warmup(optimizer, config.warmup_steps, config.unet_steps)
    ema_unet = EMAModel(unet.parameters(), decay=config.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=config.ema_decay)
    unet.train()
    text_encoder.train()
    losses = []
    for _ in tqdm(range(config.unet_steps), disable=not progress, desc="training UNet + text encoder"):
        index = torch.randint(0, len(latent_mean), (config.unet_batch,), generator=generator)
        eps = torch.randn(latent_mean[index].shape, generator=generator)
        latents = (latent_mean[index] + latent_std[index] * eps) * scaling_factor  # (B, C, 8, 8)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        drop = torch.rand(config.unet_batch, generator=generator) < config.caption_dropout
        ids = torch.where(drop[:, None], empty, tokens[index])
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        snr = compute_snr(scheduler, timesteps)
        weights = torch.clamp(snr, max=config.snr_gamma) / snr
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        optimizer.step()
        schedule.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        losses.append(loss.item())
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()
    return losses


def vae_roundtrip(vae):
    """images → latents → images, as the model's own outputs look."""
    @torch.no_grad()
    def roundtrip(images: torch.Tensor) -> torch.Tensor:
        return vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)

    return roundtrip


def build_base(output: Path, config: BuildConfig, judge_output: Path | None = None,
               progress: bool = False) -> dict:
    """Train every part of the toy base and save it as a diffusers pipeline folder (fp16 weights) at
    `output`, replacing it only once the whole build has succeeded. Returns figures about the build."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from loramix.toy.base import SCHEDULER_CONFIG, new_components
    from loramix.toy.tokenizer import build_tokenizer

    output = Path(output)
    staging = output.with_name(f".{output.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    figures: dict = {"config": asdict(config)}
    started = time.monotonic()

    tokenizer = build_tokenizer(CAPTION_WORDS, staging / "tokenizer")
    images, captions = face_dataset(config.images, config.seed)
    figures["seconds_faces"] = time.monotonic() - started

    vae, unet, text_encoder = new_components(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                                             config.seed)
    mark = time.monotonic()
    vae_losses = train_vae(vae, images, config, progress)
    figures.update(seconds_vae=time.monotonic() - mark, vae_final_loss=_tail_mean(vae_losses))

    latent_mean, latent_std = encode_latents(vae, images)
    scaling_factor = 1.0 / latent_mean.std().item()  # unit-variance latents for the UNet, as SD's 0.18215
    vae.register_to_config(scaling_factor=scaling_factor)
    figures["scaling_factor"] = scaling_factor

    mark = time.monotonic()
    unet_losses = train_denoiser(unet, text_encoder, tokenizer, latent_mean, latent_std, captions, scaling_factor,
                                 config, progress)
    figures.update(seconds_unet=time.monotonic() - mark, unet_final_loss=_tail_mean(unet_losses))

    mark = time.monotonic()
    attribute_losses = finetune_vae(vae, *attribute_faces(config.attribute_images, config.seed), config, progress)
    figures.update(seconds_attributes=time.monotonic() - mark, attribute_final_loss=_tail_mean(attribute_losses))

    if judge_output is not None:
        from loramix.toy.judge import build_judge

        mark = time.monotonic()
        figures["judge"] = build_judge(judge_output, vae_roundtrip(vae), steps=config.judge_steps,
                                       seed=config.seed, progress=progress)
        figures["seconds_judge"] = time.monotonic() - mark

    pipeline = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer, unet=unet.half(),
        scheduler=DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    _load_text_encoder_in_fp32(staging / "text_encoder" / "config.json")
    _write_render_defaults(staging)
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
    figures["seconds_total"] = time.monotonic() - started
    figures["losses"] = {"vae": vae_losses, "unet": unet_losses, "attributes": attribute_losses}
    return figures


def _load_text_encoder_in_fp32(config_path: Path) -> None:
    """The weights are stored in fp16 to keep the package small, and transformers loads a model in the dtype
    its config names, while diffusers loads the UNet and VAE in fp32: without this, plain
    `StableDiffusionPipeline.from_pretrained(folder)` mixes half and float and fails at the first render."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_render_defaults(folder: Path) -> None:
    """The steps and guidance the toy renders best at, where loramix reads any base's defaults from."""
    from loramix.models.load import RENDER_DEFAULTS
    from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS

    defaults = {"guidance": DEFAULT_GUIDANCE, "steps": DEFAULT_STEPS}
    (folder / RENDER_DEFAULTS).write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tail_mean(losses: list[float], count: int = 100) -> float:
    tail = losses[-count:]
    return sum(tail) / len(tail)
