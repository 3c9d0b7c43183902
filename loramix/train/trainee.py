"""What a LoRA training run trains: a pipeline's frozen (and quantized) base with peft LoRA layers on it,
its cached training examples, and the denoising loss."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from loramix.errors import TraineeError
from loramix.lora.adapter import LoraAdapter, LoraModule, canonical_path
from loramix.train.dataset import CaptionedImages
from loramix.train.recipe import TrainRecipe

SAMPLE_SEEDS = (0, 1, 2, 3)
# Images (or captions) encoded at once while caching: VAE activations of a batch of 32 at SD's 512 px take
# gigabytes, and the cache is written once, so small batches cost nothing that counts.
ENCODE_BATCH = 8


@dataclass
class Examples:
    """The training set as the loss reads it: latent posteriors, and text conditioning or captions."""

    latent_mean: torch.Tensor  # (N, C, h, w); flipped images' latents follow at N..2N when flips are on
    latent_std: torch.Tensor
    captions: list[str]
    text: dict[str, torch.Tensor] | None  # cached conditioning per example when the text encoders are frozen
    count: int
    latent_masks: torch.Tensor | None = None  # (N, 1, h, w) in [0, 1], flipped as the latents; None: no masks
    # Every caption of each example (`caption_per_line`), and where example i's start in the flat list of them,
    # which `text` then follows; None: `captions` alone.
    alternatives: list[tuple[str, ...]] | None = None
    # How the VAE's latents become the UNet's: (latent − shift) · scaling, from the VAE's config.
    shift: float = 0.0
    scaling: float = 1.0

    @cached_property
    def empty_row(self) -> int:
        """The empty caption's row in the cached text: the last, after every caption (`caption_dropout`)."""
        return sum(len(variants) for variants in self.alternatives) if self.alternatives else len(self.captions)

    @cached_property
    def first_rows(self) -> torch.Tensor:
        """(N,) where each example's alternatives start in their flat list (and in `text`)."""
        return torch.tensor([0, *itertools.accumulate(len(v) for v in self.alternatives)][:-1])

    @property
    def flips(self) -> bool:
        return len(self.latent_mean) == 2 * self.count

    def batch_indices(self, position: int, size: int, seed: int) -> torch.Tensor:
        """Examples at positions position … position+size of the run's stream: epoch after epoch, each a
        permutation drawn from (seed, epoch), so any step's batch is known without replaying the others."""
        indices = []
        for p in range(position, position + size):
            epoch, offset = divmod(p, self.count)
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))
            indices.append(int(order[offset]))
        return torch.tensor(indices)


@dataclass(frozen=True)
class SetAside:
    """Models of the pipeline that no training step uses (the VAE once the images are encoded; frozen text
    encoders once the captions are), left out of memory and loaded again only while samples render: so
    QLoRA's peak holds the quantized UNet and what the step needs, not the whole pipeline."""

    names: tuple[str, ...]
    load: Callable[[], dict]  # the models of `names`, loaded afresh


class LoraTrainee:
    def __init__(self, pipeline, recipe: TrainRecipe, device: torch.device, aside: SetAside | None = None):
        from diffusers import DDPMScheduler

        self.pipeline, self.recipe, self.device, self.aside = pipeline, recipe, device, aside
        self.text_encoders = [e for e in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)) if e]
        for model in (pipeline.unet, pipeline.vae, *self.text_encoders):
            if model is not None:
                model.requires_grad_(False)
        from loramix.models.loras import is_quantized

        if not is_quantized(pipeline):  # `load_pipeline` quantizes as it loads; a base loaded whole, here
            from loramix.models.quantize import quantize_pipeline

            pipeline.to(device)
            quantize_pipeline(pipeline, recipe.quantize, recipe.quantize_convs)
        torch.manual_seed(recipe.seed)  # peft draws the LoRA's initial A from the global generator
        self._add_lora(pipeline.unet, recipe.targets, "UNet")
        adapted = [(pipeline.unet, "UNet")]
        if recipe.train_text_encoder:
            for encoder in self.text_encoders:
                self._add_lora(encoder, recipe.text_encoder_targets, "text encoder")
                adapted.append((encoder, "text encoder"))
        self.orthogonal_slot = recipe.orthogonal_slot  # the slot taken, for the file's metadata
        if recipe.orthogonal_slot_from_name:
            from loramix.lora.orthogonal import name_slot, slot_count

            slots = min(slot_count(size, recipe.rank) for model, _ in adapted for *_, size in lora_downs(model))
            self.orthogonal_slot = name_slot(recipe.adapter_name, slots)
        if self.orthogonal_slot is not None:
            for model, what in adapted:
                fix_orthogonal_downs(model, recipe.rank, self.orthogonal_slot, what)
        if recipe.gradient_checkpointing:
            pipeline.unet.enable_gradient_checkpointing()
            if recipe.train_text_encoder:
                for encoder in self.text_encoders:
                    encoder.gradient_checkpointing_enable()
        pipeline.unet.train()  # for LoRA dropout; the frozen base has none
        for encoder in self.text_encoders:
            encoder.train(recipe.train_text_encoder)
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.timesteps = timestep_range(recipe, self.noise_scheduler.config.num_train_timesteps)
        self.resolution = 0
        self._token_ids: dict[str, torch.Tensor] = {}  # caption → its token ids (SD 1.x and 2.x)
        self.first_caption = ""  # what samples show when the recipe names no prompt and no trigger

    def _add_lora(self, model, targets: list[str], what: str) -> None:
        # peft's own injection, not `add_adapter` of transformers or diffusers: their wrappers gate on peft's
        # version, and a new transformers can demand a peft that is not yet published.
        from peft import LoraConfig, inject_adapter_in_model

        from loramix.models.environment import dependency_error

        recipe = self.recipe
        config = LoraConfig(r=recipe.rank, lora_alpha=recipe.effective_alpha, lora_dropout=recipe.dropout,
                            target_modules=list(targets), init_lora_weights="gaussian")
        try:
            inject_adapter_in_model(config, model)
        except ValueError as e:
            if "not found in the base model" in str(e):
                raise TraineeError(f"targets {', '.join(targets)}: not found in the base's {what}") from None
            raise dependency_error(f"adding LoRA layers to the base's {what}", e) from None
        for parameter in model.parameters():  # the LoRA factors train in fp32 whatever the base's dtype
            if parameter.requires_grad:
                parameter.data = parameter.data.float()

    # --- parameters and state ------------------------------------------------------------------------

    def unet_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.pipeline.unet.parameters() if p.requires_grad]

    def text_parameters(self) -> list[torch.nn.Parameter]:
        return [p for e in self.text_encoders for p in e.parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.unet_parameters() + self.text_parameters()

    def _components(self) -> dict[str, torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2")
        return {"unet": self.pipeline.unet, **dict(zip(names, self.text_encoders))}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{component}.{name}": p for component, model in self._components().items()
                for name, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = self.trainable_state()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise TraineeError(f"{source}: its parameters do not match this run's LoRA "
                               f"(missing {missing[:2]}, unexpected {extra[:2]})")
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(state[name])

    def adapter(self) -> LoraAdapter:
        """The trained LoRA, in loramix's in-memory form (diffusers module names)."""
        from peft import get_peft_model_state_dict

        from loramix.formats.diffusers import peft_factor_pairs

        modules = {}
        for component, model in self._components().items():
            if component != "unet" and not self.recipe.train_text_encoder:
                continue
            for path, (down, up) in peft_factor_pairs(get_peft_model_state_dict(model)).items():
                modules[f"{component}.{canonical_path(component, path)}"] = LoraModule(
                    down.detach().float().cpu().clone(), up.detach().float().cpu().clone(), self.recipe.effective_alpha)
        return LoraAdapter(modules)

    # --- data ----------------------------------------------------------------------------------------

    def cache(self, data: CaptionedImages, flip: bool) -> Examples:
        """Encode every image once (and its mirror image when flipping); with frozen text encoders, every
        caption once too."""
        self.note_dataset(data)
        return encode_examples(self.pipeline, data, flip, not self.recipe.train_text_encoder, self.device,
                               bool(self.recipe.caption_dropout))

    def note_dataset(self, data: CaptionedImages) -> None:
        """What samples take from the dataset: its resolution, and its first caption for want of a prompt."""
        self.resolution = data.pixels.shape[-1]
        self.first_caption = data.captions[0]

    def captions_of(self, examples: Examples, index: torch.Tensor,
                    generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
        """The batch's captions, one of each example's alternatives drawn from `generator` (no draw when each
        has one, so such runs are what they always were), each left empty with the chance `caption_dropout`, and
        their rows in the cached text."""
        if examples.alternatives is None:
            captions, rows = [examples.captions[i] for i in index.tolist()], index
        else:
            counts = torch.tensor([len(examples.alternatives[i]) for i in index.tolist()])
            picks = (torch.rand(len(index), generator=generator) * counts).long()  # (B,) in [0, count)
            rows = examples.first_rows[index] + picks
            captions = [examples.alternatives[i][p] for i, p in zip(index.tolist(), picks.tolist())]
        if self.recipe.caption_dropout:  # no draw without it, so such runs are what they always were
            dropped = torch.rand(len(index), generator=generator) < self.recipe.caption_dropout
            captions = ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]
            rows = torch.where(dropped, examples.empty_row, rows)
        return captions, rows

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning, as the pipeline computes it when it renders. SD 1.x and 2.x captions are
        tokenized once a run, not at every step (the pipeline's `encode_prompt` tokenizes each twice a call: a
        tenth of a toy step)."""
        if not tokenized_alone(self.pipeline):
            return text_conditioning(self.pipeline, captions, self.device, self.resolution)
        missing = [caption for caption in dict.fromkeys(captions) if caption not in self._token_ids]
        if missing:
            self._token_ids.update(zip(missing, token_ids(self.pipeline, missing)))
        ids = torch.stack([self._token_ids[caption] for caption in captions])
        return {"encoder_hidden_states": clip_hidden_states(self.pipeline, ids, self.device)}

    # --- the loss ------------------------------------------------------------------------------------

    def loss(self, examples: Examples, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scheduler = self.noise_scheduler
        which = index
        if examples.flips:
            which = index + examples.count * (torch.rand(len(index), generator=generator) < 0.5).long()
        mean, std = examples.latent_mean[which], examples.latent_std[which]
        latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)  # (B, C, h, w)
        latents = (latents - examples.shift) * examples.scaling
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(*self.timesteps, (len(index),), generator=generator)
        timesteps = timesteps.to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        captions, rows = self.captions_of(examples, index, generator)
        if examples.text is not None:
            conditioning = {key: value[rows] for key, value in examples.text.items()}
        else:
            conditioning = self.encode_text(captions)
        hidden = conditioning.pop("encoder_hidden_states")
        added = conditioning or None
        dtype = self._unet_dtype
        prediction = self.pipeline.unet(noisy.to(dtype), timesteps, hidden.to(dtype), added_cond_kwargs=added).sample
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if examples.latent_masks is None:
            per_example = per_example_loss(prediction.float(), target.float())
        else:
            mask = examples.latent_masks[which]  # (B, 1, h, w)
            outside = self.recipe.masked_loss_weight
            prior_weight = self.recipe.masked_prior_preservation_weight
            base_prediction = None
            if prior_weight:
                base_prediction = self.base_prediction(noisy, timesteps, hidden, added, captions)
            per_example = per_example_loss(prediction.float(), target.float(), outside + (1 - outside) * mask,
                                           base_prediction, 1 - mask, prior_weight)
        if self.recipe.snr_gamma:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(scheduler, timesteps)
            weights = torch.clamp(snr, max=self.recipe.snr_gamma) / snr
            if scheduler.config.prediction_type == "v_prediction":
                weights = torch.clamp(snr, max=self.recipe.snr_gamma) / (snr + 1)
            per_example = per_example * weights
        return per_example.mean()

    @torch.no_grad()
    def base_prediction(self, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor, added,
                        captions: list[str]) -> torch.Tensor:
        """What the base predicts for the same input with the LoRA off (its text encoders' too)."""
        for layer in self._lora_layers:
            layer.enable_adapters(False)
        try:
            if self.recipe.train_text_encoder:
                conditioning = self.encode_text(captions)
                hidden = conditioning.pop("encoder_hidden_states")
                added = conditioning or None
            dtype = self._unet_dtype
            return self.pipeline.unet(noisy.to(dtype), timesteps, hidden.to(dtype), added_cond_kwargs=added).sample
        finally:
            for layer in self._lora_layers:
                layer.enable_adapters(True)

    @cached_property
    def _unet_dtype(self) -> torch.dtype:
        """The frozen UNet's compute dtype, read once: diffusers' `ModelMixin.dtype` walks every module for
        dtype hooks at each read (under cProfile, two reads a step took 0.7 s of 160 toy steps' 22 s)."""
        return self.pipeline.unet.dtype

    @cached_property
    def _lora_layers(self) -> list:
        """peft's LoRA layers in the UNet and text encoders, found once rather than at every training step."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [module for model in self._components().values() for module in model.modules()
                if isinstance(module, BaseTunerLayer)]

    # --- samples -------------------------------------------------------------------------------------

    def save_samples(self, path: Path) -> None:
        """Render the recipe's sample prompts with the LoRA as it is now, into one grid image."""
        from loramix.models.load import render_defaults
        from loramix.render.core import RenderSettings, render
        from loramix.render.images import image_grid, save_png

        prompts = self.recipe.sample_prompts or [self.recipe.trigger or self.first_caption]
        steps, guidance = render_defaults(self.recipe.base)
        steps = self.recipe.sample_steps or steps
        size = self.resolution
        settings = [RenderSettings(prompt, seed, steps, guidance, width=size, height=size)
                    for prompt in prompts for seed in SAMPLE_SEEDS]
        models = [self.pipeline.unet, *self.text_encoders]
        modes = [model.training for model in models]
        for model in models:
            model.eval()
        try:
            with self._set_aside_models_back():
                images = render(self.pipeline, settings)
        finally:
            for model, mode in zip(models, modes):
                model.train(mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(images, columns=len(SAMPLE_SEEDS), scale=max(1, 256 // size)), path)


    @contextmanager
    def _set_aside_models_back(self):
        if self.aside is None:
            yield
            return
        for name, model in self.aside.load().items():
            setattr(self.pipeline, name, model)
        try:
            yield
        finally:
            for name in self.aside.names:
                setattr(self.pipeline, name, None)


@torch.no_grad()
def encode_examples(pipeline, data: CaptionedImages, flip: bool, with_text: bool, device: torch.device,
                    empty_caption: bool = False) -> Examples:
    """The training set encoded once by the pipeline's VAE (and mirrored when `flip`); with `with_text`, every
    caption through its text encoders too, and the empty caption after them with `empty_caption`."""
    pixels = torch.cat([data.pixels, data.pixels.flip(-1)]) if flip else data.pixels
    masks = data.masks
    if masks is not None and flip:
        masks = torch.cat([masks, masks.flip(-1)])  # a mask flips with its image
    vae = pipeline.vae
    means, stds = [], []
    for start in range(0, len(pixels), ENCODE_BATCH):
        batch = pixels[start : start + ENCODE_BATCH].to(device, vae.dtype)
        posterior = vae.encode(batch).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    text = None
    flat = [caption for variants in data.alternatives for caption in variants] if data.alternatives \
        else data.captions
    flat = [*flat, ""] if empty_caption else flat
    if with_text:
        size = data.pixels.shape[-1]
        encoded = [text_conditioning(pipeline, flat[i : i + ENCODE_BATCH], device, size)
                   for i in range(0, len(flat), ENCODE_BATCH)]
        text = {key: torch.cat([part[key] for part in encoded]) for key in encoded[0]}
    means = torch.cat(means)
    latent_masks = None if masks is None else latent_grid(masks, means.shape[-2:]).to(device)
    return Examples(means, torch.cat(stds), list(data.captions), text, len(data), latent_masks, data.alternatives,
                    shift=getattr(vae.config, "shift_factor", None) or 0.0, scaling=vae.config.scaling_factor)


def lora_downs(model):
    """(name, down-projection A, its input size) of every LoRA layer of `model`; a convolution's A reads
    in_channels × its kernel."""
    from peft.tuners.lora import LoraLayer

    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            for down in layer.lora_A.values():
                yield name, down, down.weight[0].numel()


def fix_orthogonal_downs(model, rank: int, slot: int, what: str) -> None:
    """Orthogonal adaptation: every LoRA layer's down-projection A set to `slot`'s rows of the shared basis of
    its input size, and frozen (`loramix.lora.orthogonal`)."""
    from loramix.lora.orthogonal import slot_count, slot_down

    downs: dict[int, torch.Tensor] = {}  # input size → its slot's rows: one QR a size, not one a layer
    for name, down, size in lora_downs(model):
        room = slot_count(size, rank)
        if slot >= room:
            raise TraineeError(f"orthogonal_slot {slot}: the {what}'s {name} reads {size} features, room for "
                               f"{room} slots of rank {rank} (0 to {room - 1})")
        if size not in downs:
            downs[size] = slot_down(size, rank, slot)
        with torch.no_grad():
            down.weight.copy_(downs[size].reshape(down.weight.shape))
        down.weight.requires_grad_(False)


def text_conditioning(pipeline, captions: list[str], device: torch.device, size: int) -> dict[str, torch.Tensor]:
    """The UNet's text conditioning of `captions`, as the pipeline computes it when it renders `size`-pixel
    images."""
    from loramix.models.load import is_sdxl

    if tokenized_alone(pipeline):
        return {"encoder_hidden_states": clip_hidden_states(pipeline, token_ids(pipeline, captions), device)}
    if not is_sdxl(pipeline):
        embeds, _ = pipeline.encode_prompt(captions, device, 1, False)
        return {"encoder_hidden_states": embeds}
    embeds, _, pooled, _ = pipeline.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
    # SDXL's micro-conditioning: original size, crop corner, target size; the images were not cropped.
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device).repeat(len(captions), 1)
    return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids.to(pooled.dtype)}


def tokenized_alone(pipeline) -> bool:
    """Whether a caption's conditioning is its token ids through one text encoder, with no attention mask (SD 1.x
    and 2.x); SDXL's two encoders and the rare masked encoder go through `encode_prompt`."""
    from loramix.models.load import is_sdxl

    return not is_sdxl(pipeline) and not getattr(pipeline.text_encoder.config, "use_attention_mask", False)


def token_ids(pipeline, captions: list[str]) -> torch.Tensor:
    """(N, max length) token ids of SD 1.x / 2.x captions, padded and truncated as `encode_prompt` does."""
    tokenizer = pipeline.tokenizer
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def clip_hidden_states(pipeline, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The text encoder's last hidden states of token ids, as SD 1.x / 2.x pipelines' `encode_prompt` computes
    them without clip skip, textual inversion or a LoRA scale (none of which training uses) for an encoder
    without an attention mask."""
    encoder = pipeline.text_encoder
    return encoder(ids.to(device))[0].to(encoder.dtype)


def timestep_range(recipe: TrainRecipe, train_timesteps: int) -> tuple[int, int]:
    """The [low, high) a step draws its noise timesteps from: the recipe's min_timestep and max_timestep, checked
    against the base scheduler's count."""
    high = train_timesteps if recipe.max_timestep is None else recipe.max_timestep
    if high > train_timesteps:
        raise TraineeError(f"max_timestep: {high} is past the base scheduler's {train_timesteps} training "
                           "timesteps")
    if recipe.min_timestep >= high:
        raise TraineeError(f"min_timestep: {recipe.min_timestep} leaves no timestep below {high} to draw")
    return recipe.min_timestep, high


def latent_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (N, 1, H, W) brought to the latent grid (N, 1, h, w), each latent pixel the mean of the image
    pixels it covers (an area average: the VAE's factor divides H and W)."""
    return F.adaptive_avg_pool2d(masks, tuple(size))


def per_example_loss(prediction: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None,
                     base_prediction: torch.Tensor | None = None, outside: torch.Tensor | None = None,
                     prior_weight: float = 0.0) -> torch.Tensor:
    """The squared error per example (B,), the mean over its latent pixels and channels; with `pixel_weights`
    (B, 1, h, w), their weighted mean Σ w·(p − t)² / Σ w. Dividing by Σ w rather than by the pixel count (as
    kohya does) keeps each image's loss on the plain loss's scale whatever its mask's size, so a small mask
    does not quietly lower the learning rate, and weights of ones give the plain loss exactly.

    With `base_prediction`, masked prior preservation adds λ·Σ o·(p − p_base)² / Σ o, where o (`outside`,
    B, 1, h, w) is how far each latent pixel lies outside the mask: the mean distance from the base's own
    prediction there, on the same scale as the first term whatever the mask's size (zero for a mask of ones)."""
    squared = F.mse_loss(prediction, target, reduction="none")  # (B, C, h, w)
    if pixel_weights is None:
        return squared.mean(dim=(1, 2, 3))
    loss = _weighted_mean(squared, pixel_weights)
    if base_prediction is not None and prior_weight:
        drift = F.mse_loss(prediction, base_prediction.to(prediction.dtype), reduction="none")
        loss = loss + prior_weight * _weighted_mean(drift, outside)
    return loss


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·v / Σ w per example, the weights (B, 1, h, w) spread over the channels; 0 where every weight is 0."""
    weights = weights.expand_as(values)
    return (values * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp(min=torch.finfo(values.dtype).tiny)
