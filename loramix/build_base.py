"""Training the toy base from scratch: the VAE on face images, then the UNet and text encoder on its latents.

    loramix build-base            # the shipped weights: about an hour on a 2-core CPU

The VAE, the UNet and the text encoder learn from faces that never show a mustache, lipstick or glasses:
those are for LoRAs to teach. Only the VAE's decoder, last, learns to draw them (encoder frozen, so the
latent space the UNet knows stays the same). Every step is seeded, so the same command rebuilds the same
model (to float noise between machines).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from loramix.errors import LoramixError
from loramix.faces import CAPTION_WORDS, caption, draw_faces, sample_face


@dataclass
class BuildConfig:
    images: int = 12_000  # distinct faces; the UNet sees each about 17 times
    vae_steps: int = 2_000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6  # SD's VAE keeps KL tiny: latents stay sharp, their scale is fixed afterwards
    unet_steps: int = 3_200
    unet_batch: int = 64
    unet_lr: float = 5e-4
    text_encoder_lr: float = 2e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional prediction that guidance needs
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): same quality in fewer steps
    ema_decay: float = 0.999
    warmup_steps: int = 200
    decoder_steps: int = 600
    decoder_images: int = 4_000
    decoder_lr: float = 5e-4
    judge_steps: int = 1_500
    seed: int = 0

    def __post_init__(self):
        for name in ("images", "vae_steps", "vae_batch", "unet_steps", "unet_batch"):
            if getattr(self, name) < 1:
                raise LoramixError(f"build config: {name} must be at least 1, got {getattr(self, name)}")
        if self.decoder_steps < 0 or self.decoder_images < 1:
            raise LoramixError("build config: decoder_steps must be at least 0 and decoder_images at least 1")
        if not 0 <= self.caption_dropout < 1:
            raise LoramixError(f"build config: caption_dropout must be in [0, 1), got {self.caption_dropout}")


def face_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`count` plain faces as a (count, 3, 64, 64) float tensor in [-1, 1], with their captions."""
    from loramix.judge import to_tensor

    specs = [sample_face(seed * 10_000_000 + i) for i in range(count)]
    return to_tensor(draw_faces(specs)), [caption(spec) for spec in specs]


def _cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_vae(vae, images: torch.Tensor, config: BuildConfig, progress: bool = False) -> list[float]:
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(config.seed + 1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = _cosine_with_warmup(optimizer, min(config.warmup_steps, config.vae_steps // 10), config.vae_steps)
    vae.train()
    losses = []
    for _ in tqdm(range(config.vae_steps), disable=not progress, desc="training VAE"):
        batch = images[torch.randint(0, len(images), (config.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = (F.mse_loss(reconstruction, batch) + 0.5 * F.l1_loss(reconstruction, batch)
                + config.vae_kl_weight * posterior.kl().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    return losses


def attribute_faces(count: int, seed: int) -> torch.Tensor:
    """Faces each showing a mustache, lipstick and glasses with probability ½, for the decoder alone."""
    import random

    from loramix.judge import to_tensor

    rng = random.Random(f"decoder/{seed}")
    specs = [sample_face(seed * 10_000_000 + 5_000_000 + i, rng.random() < 0.5, rng.random() < 0.5,
                         rng.random() < 0.5) for i in range(count)]
    return to_tensor(draw_faces(specs))


def finetune_decoder(vae, images: torch.Tensor, config: BuildConfig, progress: bool = False) -> list[float]:
    """Teach the VAE's decoder to draw what the encoder keeps of faces with the three attributes.

    A VAE trained only on plain faces projects a mustache away: its decoder draws the face it knows, and a
    LoRA could never teach what the decoder cannot draw. SD's VAE saw every kind of image. Here the encoder
    stays frozen, so the latent space, and the UNet trained in it, never meet the attributes; only the
    decoder learns to render them.
    """
    from tqdm import tqdm

    vae.requires_grad_(False)
    latent_mean, latent_std = encode_latents(vae, images)
    parameters = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    generator = torch.Generator().manual_seed(config.seed + 3)
    optimizer = torch.optim.AdamW(parameters, lr=config.decoder_lr, weight_decay=0.0)
    vae.train()
    losses = []
    for _ in tqdm(range(config.decoder_steps), disable=not progress, desc="fine-tuning the VAE decoder"):
        index = torch.randint(0, len(images), (config.vae_batch,), generator=generator)
        latents = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, images[index]) + 0.5 * F.l1_loss(reconstruction, images[index])
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

    from loramix.toybase import SCHEDULER_CONFIG

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

    from loramix.tokenizer import build_tokenizer
    from loramix.toybase import SCHEDULER_CONFIG, new_components

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
    decoder_losses = finetune_decoder(vae, attribute_faces(config.decoder_images, config.seed), config, progress)
    figures.update(seconds_decoder=time.monotonic() - mark, decoder_final_loss=_tail_mean(decoder_losses))

    if judge_output is not None:
        from loramix.judge import build_judge

        mark = time.monotonic()
        figures["judge"] = build_judge(judge_output, vae_roundtrip(vae), steps=config.judge_steps,
                                       seed=config.seed, progress=progress)
        figures["seconds_judge"] = time.monotonic() - mark

    pipeline = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer, unet=unet.half(),
        scheduler=DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
    figures["seconds_total"] = time.monotonic() - started
    figures["losses"] = {"vae": vae_losses, "unet": unet_losses, "decoder": decoder_losses}
    return figures


def _tail_mean(losses: list[float], count: int = 100) -> float:
    tail = losses[-count:]
    return sum(tail) / len(tail)
