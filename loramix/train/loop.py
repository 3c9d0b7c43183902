"""Training a LoRA over a frozen base (QLoRA when the base is quantized), one explicit loop.

    noise ε, timestep t                     latents z₀ = VAE(image) · scaling
    z_t = √ᾱ_t·z₀ + √(1-ᾱ_t)·ε              (the scheduler's add_noise)
    loss = ‖UNet_{W + (α/r)·B·A}(z_t, t, text) − ε‖²     only A and B learn
    with masked_loss: Σ m·(UNet(…) − ε)² / Σ m, per image, where m = w + (1 − w)·mask on the latent grid,
    with masked prior preservation also + λ·Σ (1 − mask)·(UNet(…) − UNet_W(…))² / Σ (1 − mask), the base's
    own prediction (the LoRA off) as the target outside the mask

The base's UNet (and text encoders) are frozen and stored in NF4, int8 or left as they are; peft puts
the LoRA layers on the target modules. Every random draw of step s comes from generators seeded by
(seed, s), so a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
Under `accelerate launch` each process trains on its own share of every batch and the LoRA gradients are
averaged across processes before each optimizer step.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loramix.errors import TrainError, TrainInterrupted
from loramix.train.checkpoint import Checkpoint
from loramix.train.recipe import TrainRecipe
from loramix.train.trainee import LoraTrainee
from loramix.util.atomic import atomic_path
from loramix.util.memory import peak_memory, reuse_freed_memory
from loramix.util.progress import Status


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    final_loss: float
    seconds: float
    run: Path
    main_process: bool = True  # under `accelerate launch`, the process that wrote the outputs


def train(recipe: TrainRecipe, resume: str | None = None, progress: bool = False,
          report: Callable[[str], None] | None = None, status: Status | None = None) -> TrainResult:
    """Train `recipe`; with `resume` ("latest" or a checkpoint folder) continue from a checkpoint. `report`
    receives notes about the data worth telling the user (images left out, captions filled in); `status`, what
    the run is doing before its first step (loading, quantizing, caching)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=recipe.mixed_precision, cpu=not torch.cuda.is_available())
    if recipe.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise TrainError("mixed_precision: fp16 needs a GPU; use 'no' or 'bf16' on a CPU")
    with torch.random.fork_rng(devices=[]):  # LoRA dropout draws from the global generator: keep callers' state
        return _train(recipe, resume, progress, accelerator, report or (lambda note: None), status or Status())


def _train(recipe: TrainRecipe, resume: str | None, progress: bool, accelerator, report,
           status: Status) -> TrainResult:
    started = time.monotonic()
    folder = recipe.run_folder
    if accelerator.is_main_process:
        _check_writable(folder)
    # a checkpoint that is missing or from another recipe is an error before minutes of loading, not after
    checkpoint = _checkpoint_to_resume(resume, folder / "checkpoints", recipe) if resume else None
    model, examples, dataset_size = _prepare(recipe, accelerator, report, status)
    reuse_freed_memory()  # the base is loaded: from here on each step reuses the last step's buffers
    per_step = recipe.batch_size * recipe.gradient_accumulation * accelerator.num_processes
    total_steps = recipe.steps if recipe.steps is not None else recipe.epochs * math.ceil(dataset_size / per_step)
    optimizer = _optimizer(recipe, model)
    run = _Run(recipe, folder, model, examples, optimizer, _schedule(optimizer, recipe, total_steps), accelerator,
               started)
    loss_value = run.train_steps(run.begin(checkpoint), total_steps, progress)
    if accelerator.num_processes > 1:
        _check_processes_agree(model, accelerator)
    adapter_path = folder / f"{recipe.adapter_name}.safetensors"
    if accelerator.is_main_process:
        _write_outputs(model, recipe, folder, adapter_path, run.log_rows, dataset_size, total_steps, loss_value,
                       status)
    accelerator.wait_for_everyone()
    return TrainResult(adapter_path, total_steps, loss_value, time.monotonic() - started, folder,
                       accelerator.is_main_process)


def _prepare(recipe: TrainRecipe, accelerator, report, status: Status) -> tuple[LoraTrainee, object, int]:
    """The base loaded, the LoRA put on it and the dataset encoded once: the trainee, its cached examples and
    the number of images.

    The models that encode the dataset load first and the UNet after them, so that those no step uses (the
    VAE, and the text encoders when they do not train) are set aside before the UNet arrives: they are never
    resident beside it but while samples render (`SetAside`)."""
    from loramix.models.load import MODELS, load_models, load_pipeline, unet_config
    from loramix.train.dataset import load_dataset
    from loramix.train.trainee import SetAside, encode_examples
    from loramix.util.memory import trim_free_heap

    shown = status if accelerator.is_main_process else None
    loading = (recipe.base, recipe.dtype, recipe.quantize, recipe.quantize_convs, accelerator.device)
    pipeline = load_pipeline(*loading, shown, skip=("unet",))
    native = unet_config(recipe.base)["sample_size"] * pipeline.vae_scale_factor
    resolution = native if recipe.resolution is None else recipe.resolution
    data = load_dataset(recipe.dataset, resolution, recipe.trigger, recipe.caption_template,
                        recipe.skip_bad_images, masks=recipe.masked_loss, caption_per_line=recipe.caption_per_line)
    if data.uncaptioned:
        report(f"{len(data.uncaptioned)} of {len(data)} images have no caption: captioned {recipe.trigger!r} "
               f"(the trigger), e.g. {data.uncaptioned[0]}")
    for skipped in data.skipped:
        report(f"left out {skipped}")
    if data.unmasked:
        report(f"{len(data.unmasked)} of {len(data)} images have no mask: their loss counts everywhere, "
               f"e.g. {data.unmasked[0]}")
    status(f"encoding {len(data)} training images" + (" and their mirror images" if recipe.flip else "")
           + ("" if recipe.train_text_encoder else " and captions") + " once")
    examples = encode_examples(pipeline, data, recipe.flip, not recipe.train_text_encoder, accelerator.device,
                               bool(recipe.caption_dropout))
    aside = tuple(name for name in MODELS if getattr(pipeline, name, None) is not None
                  and (name == "vae" or (name.startswith("text_encoder") and not recipe.train_text_encoder)))
    for name in aside:
        setattr(pipeline, name, None)
    gc.collect()
    trim_free_heap()
    pipeline.unet = load_models(recipe.base, ("unet",), *loading[1:], shown)["unet"]
    model = LoraTrainee(pipeline, recipe, accelerator.device,
                        SetAside(aside, lambda: load_models(recipe.base, aside, *loading[1:])))
    model.note_dataset(data)
    return model, examples, len(data)


@dataclass
class _Run:
    """A run's moving parts once set up, and what the main process writes as the steps go: the log, the
    checkpoints and the samples."""

    recipe: TrainRecipe
    folder: Path
    model: LoraTrainee
    examples: object
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    accelerator: object
    started: float
    log_rows: list[dict] = field(default_factory=list)

    def begin(self, checkpoint: tuple[Path, Checkpoint] | None) -> int:
        """The first step to train: after the checkpoint resumed from, else 0 (and the old run's log goes)."""
        if checkpoint:
            start_step, self.log_rows = _resume(*checkpoint, self.model, self.optimizer, self.schedule, self.folder)
            return start_step
        if self.accelerator.is_main_process and (self.folder / "train_log.jsonl").exists():
            (self.folder / "train_log.jsonl").unlink()  # a fresh run replaces the old run's log
        return 0

    def train_steps(self, start_step: int, total_steps: int, progress: bool) -> float:
        """Steps `start_step` … `total_steps`; the last loss. Ctrl-C ends the run after the step in hand, with
        a checkpoint of it."""
        from tqdm import tqdm

        recipe, accelerator = self.recipe, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        bar = tqdm(total=total_steps, initial=start_step, desc=f"training {recipe.adapter_name}", unit="step",
                   disable=not (progress and accelerator.is_main_process))
        loss_value = self.log_rows[-1]["loss"] if self.log_rows else float("nan")
        done = start_step
        with _interrupt_between_steps() as interrupted:
            for step in range(start_step, total_steps):
                if interrupted():
                    break
                loss_value = _train_step(self.model, self.examples, recipe, step, world, rank, accelerator,
                                         self.optimizer)
                if not math.isfinite(loss_value):
                    bar.close()
                    raise TrainError(f"the loss became {loss_value} at step {step + 1}: try a lower "
                                     f"learning_rate (now {recipe.learning_rate:g}) or max_grad_norm")
                self.schedule.step()
                done = step + 1
                self._record(done, loss_value, total_steps)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.close()
            if interrupted():
                path = self.checkpoint(done) if accelerator.is_main_process and done > start_step else None
                raise TrainInterrupted(f"interrupted after step {done}: " + (
                    f"wrote {path}; `--resume` continues from it" if path else "no new step to save"))
        return loss_value

    def checkpoint(self, step: int) -> Path:
        from loramix.train.checkpoint import save_checkpoint

        return save_checkpoint(self.folder / "checkpoints",
                               Checkpoint(step, self.model.trainable_state(), self.optimizer.state_dict(),
                                          self.schedule.state_dict(), {"recipe": self.recipe.as_dict()}),
                               keep=self.recipe.keep_checkpoints)

    def _record(self, done: int, loss_value: float, total_steps: int) -> None:
        recipe = self.recipe
        row = {"step": done, "loss": loss_value, "lr": self.schedule.get_last_lr()[0],
               "processes": self.accelerator.num_processes,
               "seconds": round(time.monotonic() - self.started, 3), **peak_memory()}
        self.log_rows.append(row)
        if not self.accelerator.is_main_process:
            return
        if done % recipe.log_every == 0 or done == total_steps:
            with open(self.folder / "train_log.jsonl", "a") as log:
                log.write(json.dumps(row) + "\n")
        if recipe.checkpoint_every and done % recipe.checkpoint_every == 0:
            self.checkpoint(done)
        if recipe.sample_every and done % recipe.sample_every == 0 and done != total_steps:
            self.model.save_samples(self.folder / "samples" / f"step-{done:06d}.png")


@contextmanager
def _interrupt_between_steps():
    """Ctrl-C ends the run after the step in progress, so the checkpoint written then is consistent (a step cut
    in the middle of the optimizer update would not be). A second Ctrl-C stops at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_writable(run: Path) -> None:
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".loramix-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output {run}: cannot write there ({e.strerror or e})") from None


def _check_processes_agree(model, accelerator) -> None:
    """Every process must end with the same LoRA, or the gradients were not shared."""
    checksum = torch.stack([p.detach().double().sum() for p in model.trainable_parameters()]).sum()
    gathered = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    if not torch.all(gathered == gathered[0]):
        raise TrainError(f"the {accelerator.num_processes} processes ended with different LoRAs: {gathered.tolist()}")


def _write_outputs(model, recipe, run, adapter_path, log_rows, dataset_size, steps, final_loss, status) -> None:
    from loramix.formats.metadata import training_metadata
    from loramix.formats.write import write_adapter
    from loramix.train.plot import loss_plot

    run.mkdir(parents=True, exist_ok=True)
    recorded = {**recipe.as_dict(), "orthogonal_slot": model.orthogonal_slot}  # a slot taken by name, resolved
    metadata = training_metadata(recorded, recipe.adapter_name, recipe.base, recipe.trigger, steps, dataset_size,
                                 final_loss, recipe.learning_rate)
    write_adapter(model.adapter(), adapter_path, recipe.format, metadata)
    if log_rows:
        loss_plot([r["step"] for r in log_rows], [r["loss"] for r in log_rows], run / "loss.png",
                  title=f"{recipe.adapter_name}: loss per step")
    if recipe.final_samples:
        status("rendering the sample grid (final_samples = false skips it)")
        model.save_samples(run / "samples" / f"step-{steps:06d}.png")


def _train_step(model, examples, recipe, step, world, rank, accelerator, optimizer) -> float:
    """One optimizer step over `gradient_accumulation` micro-batches; returns the loss averaged over all
    processes."""
    total = torch.zeros((), device=accelerator.device)
    for micro in range(recipe.gradient_accumulation):
        generator = torch.Generator().manual_seed(_seed(recipe.seed, step, micro, rank))
        torch.manual_seed(_seed(recipe.seed, step, micro, rank) + 1)  # LoRA dropout
        position = ((step * recipe.gradient_accumulation + micro) * world + rank) * recipe.batch_size
        index = examples.batch_indices(position, recipe.batch_size, recipe.seed)
        with accelerator.autocast():
            loss = model.loss(examples, index, generator) / recipe.gradient_accumulation
        loss.backward()
        total += loss.detach()
    params = [p for group in optimizer.param_groups for p in group["params"]]  # not a walk over the whole UNet
    if world > 1:  # average the LoRA gradients across processes, as DDP would
        flat = torch.cat([p.grad.flatten() for p in params])
        flat = accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        total = accelerator.reduce(total, reduction="mean")
    if recipe.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total)


def _seed(seed: int, step: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**63 - 1)


def _optimizer(recipe: TrainRecipe, model):
    groups = [{"params": model.unet_parameters(), "lr": recipe.learning_rate}]
    if model.text_parameters():
        groups.append({"params": model.text_parameters(),
                       "lr": recipe.effective_text_encoder_learning_rate})
    if recipe.optimizer == "adamw8bit":
        if not torch.cuda.is_available():
            raise TrainError("optimizer: adamw8bit needs a GPU (bitsandbytes' 8-bit optimizers); use adamw")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
    return torch.optim.AdamW(groups, weight_decay=1e-2, foreach=True)  # one kernel over all factors, CPUs too


def _schedule(optimizer, recipe: TrainRecipe, total_steps: int):
    warmup = recipe.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _checkpoint_to_resume(resume: str, checkpoints: Path, recipe: TrainRecipe) -> tuple[Path, Checkpoint]:
    """The checkpoint `--resume` names ("latest": the newest in `checkpoints`), read and checked against the
    recipe."""
    from loramix.train.checkpoint import list_checkpoints, load_checkpoint

    if resume == "latest":
        found = list_checkpoints(checkpoints)
        if not found:
            raise TrainError(f"--resume: no checkpoint in {checkpoints} (set checkpoint_every to write them)")
        path = found[-1]
    else:
        path = Path(resume)
    checkpoint = load_checkpoint(path)
    saved, now = checkpoint.extra.get("recipe", {}), recipe.as_dict()  # both with alpha as used
    changed = [k for k in ("rank", "alpha", "targets", "train_text_encoder", "text_encoder_targets", "base")
               if k in saved and saved[k] != now[k]]
    if changed:
        raise TrainError(f"--resume {path}: the recipe changed {', '.join(changed)} since this checkpoint")
    return path, checkpoint


def _resume(path: Path, checkpoint: Checkpoint, model, optimizer, schedule, run: Path) -> tuple[int, list[dict]]:
    model.load_trainable_state(checkpoint.trainable, str(path))
    optimizer.load_state_dict(checkpoint.optimizer)
    schedule.load_state_dict(checkpoint.schedule)
    log_rows = []
    log = run / "train_log.jsonl"
    if log.exists():  # keep the log up to the checkpoint: later lines are the steps being redone
        log_rows = [row for row in _log_rows(log.read_text(errors="replace")) if row["step"] <= checkpoint.step]
        with atomic_path(log) as temp:
            temp.write_text("".join(json.dumps(row) + "\n" for row in log_rows))
    return checkpoint.step, log_rows


def _log_rows(text: str) -> list[dict]:
    """The log's rows; a line cut short by a crash (or otherwise unreadable) is dropped, not fatal."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows
