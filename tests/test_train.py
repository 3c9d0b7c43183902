"""`loramix train` on the toy base: a few steps over the 4-bit base, end to end, and what the run leaves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.train.loop import train
from loramix.train.recipe import make_recipe


def recipe(dataset: Path, tmp_path: Path, **overrides):
    values = dict(dataset=str(dataset), trigger="mustache", caption_template="{caption}", steps=4, batch_size=2,
                  learning_rate=1e-3, rank=4, output=str(tmp_path / "run"), name="m")
    return make_recipe(None, {**values, **overrides})


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory, mustache_faces):
    """Four steps over the NF4 base, sampling in the middle of the run (the eval-under-no_grad trap) and
    checkpointing every two steps."""
    tmp_path = tmp_path_factory.mktemp("nf4")
    result = train(recipe(mustache_faces, tmp_path, sample_every=2, checkpoint_every=2, keep_checkpoints=5))
    return tmp_path, result


def test_a_run_writes_adapter_log_plot_samples_and_checkpoints(nf4_run):
    tmp_path, result = nf4_run
    run = tmp_path / "run"
    assert result.adapter == run / "m.safetensors" and result.steps == 4
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(row["loss"] > 0 for row in rows) and rows[-1]["loss"] == result.final_loss
    assert all(row["peak_rss_gib"] > 0.1 for row in rows)  # the process's peak memory so far, every row
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_the_adapter_has_its_metadata_and_only_the_unet_attention(nf4_run):
    _, result = nf4_run
    with safe_open(str(result.adapter), "pt") as file:
        metadata = file.metadata()
        keys = list(file.keys())
    recipe_saved = json.loads(metadata["loramix_recipe"])
    assert recipe_saved["rank"] == 4 and recipe_saved["quantize"] == "nf4"
    assert metadata["loramix_trigger_words"] == "mustache" and metadata["loramix_steps"] == "4"
    assert metadata["loramix_dataset_size"] == "8" and float(metadata["loramix_final_loss"]) == pytest.approx(
        result.final_loss, rel=1e-5)
    assert metadata["ss_network_dim"] == "4"
    assert keys and all(k.startswith("lora_unet_") for k in keys)  # kohya naming, which every loader reads
    modules = read_adapter(result.adapter).modules
    assert {key.split(".", 1)[0] for key in modules} == {"unet"}
    assert {key.removesuffix(".0").rsplit(".", 1)[-1] for key in modules} == {"to_q", "to_k", "to_v", "to_out"}


def test_the_adapter_loads_in_plain_diffusers_and_at_weight_zero_renders_the_base(nf4_run):
    from loramix.models.load import load_pipeline
    from loramix.render.core import RenderSettings, render

    _, result = nf4_run
    pipeline = load_pipeline("toy")
    settings = [RenderSettings("a face with a mustache", seed, 4, 4.0, 64, 64) for seed in (0, 1)]
    base = [torch.from_numpy(np.asarray(image).copy()) for image in render(pipeline, settings)]
    pipeline.load_lora_weights(str(result.adapter), adapter_name="m")
    pipeline.set_adapters(["m"], adapter_weights=[1.0])
    with_lora = [torch.from_numpy(np.asarray(image).copy()) for image in render(pipeline, settings)]
    pipeline.set_adapters(["m"], adapter_weights=[0.0])
    at_zero = [torch.from_numpy(np.asarray(image).copy()) for image in render(pipeline, settings)]
    assert all(torch.equal(a, b) for a, b in zip(base, at_zero))
    assert not all(torch.equal(a, b) for a, b in zip(base, with_lora))


@pytest.mark.slow  # trains the steps after the checkpoint again (about 2 s)
def test_resume_continues_bit_for_bit(mustache_faces, nf4_run, tmp_path):
    first, result = nf4_run
    resumed_run = tmp_path / "run"
    (resumed_run / "checkpoints").mkdir(parents=True)
    shutil.copytree(first / "run" / "checkpoints" / "step-000002", resumed_run / "checkpoints" / "step-000002")
    log = (first / "run" / "train_log.jsonl").read_text().splitlines()
    # It died while logging step 4: that line is cut short, and resuming drops it with the rest after step 2.
    (resumed_run / "train_log.jsonl").write_text("\n".join(log[:3]) + "\n" + log[3][:10])
    again = train(recipe(mustache_faces, tmp_path, sample_every=2, checkpoint_every=2, keep_checkpoints=5),
                  resume="latest")
    resumed_log = (resumed_run / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in resumed_log] == [json.loads(r)["loss"] for r in log]
    original, continued = load_file(str(result.adapter)), load_file(str(again.adapter))
    assert original.keys() == continued.keys()
    assert all(torch.equal(original[k], continued[k]) for k in original)


def test_training_the_text_encoder_too_without_quantization(mustache_faces, tmp_path):
    result = train(recipe(mustache_faces, tmp_path, steps=2, quantize="none", train_text_encoder=True, rank=2,
                          format="kohya", final_samples=False))
    keys = list(load_file(str(result.adapter)))
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)


def test_timesteps_are_drawn_from_the_recipes_range_and_the_default_is_every_timestep(mustache_faces, tmp_path):
    """min_timestep and max_timestep bound what the UNet is trained at, [min, max) as kohya's; left out, a step
    draws from all of the scheduler's timesteps, as before the keys."""
    from loramix.models.load import load_pipeline
    from loramix.train.dataset import load_dataset
    from loramix.train.trainee import LoraTrainee, timestep_range

    data = tmp_path / "two"
    data.mkdir()
    for name in ("0000.png", "0000.txt", "0001.png", "0001.txt"):
        shutil.copy(mustache_faces / name, data / name)
    run = recipe(data, tmp_path, quantize="none", rank=2, min_timestep=300, max_timestep=305)
    trainee = LoraTrainee(load_pipeline("toy", quantize="none"), run, torch.device("cpu"))
    examples = trainee.cache(load_dataset(data, 64), flip=False)
    seen = []
    trainee.pipeline.unet.register_forward_pre_hook(lambda _, args: seen.append(args[1].clone()))
    with torch.no_grad():
        for step in range(8):
            trainee.loss(examples, torch.arange(2), torch.Generator().manual_seed(step))
    assert set(torch.cat(seen).tolist()) == {300, 301, 302, 303, 304}
    assert timestep_range(recipe(mustache_faces, tmp_path), 1000) == (0, 1000)


@pytest.mark.slow  # it must train: 30 steps are what it takes for the loss to fall clear of its noise
def test_the_loss_goes_down_on_a_repeated_batch(mustache_faces, tmp_path):
    """Sanity of the whole loop: one image, many steps, a high learning rate."""
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(mustache_faces / "0000.png", data / "0000.png")
    shutil.copy(mustache_faces / "0000.txt", data / "0000.txt")
    result = train(recipe(data, tmp_path, steps=30, batch_size=4, learning_rate=3e-3, quantize="none",
                          snr_gamma=5.0))
    rows = [json.loads(line)["loss"] for line in (Path(result.run) / "train_log.jsonl").read_text().splitlines()]
    assert sum(rows[-10:]) / 10 < sum(rows[:10]) / 10


def test_cli_flags_override_the_recipe_and_errors_are_one_line(mustache_faces, tmp_path):
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(f'dataset = "{mustache_faces}"\nsteps = 100\nrank = 16\nfinal_samples = false\n')
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(recipe_file), "--steps", "1", "--rank", "2", "--quantize", "none",
                                  "--output", str(tmp_path / "out"), "--targets", "to_q,to_v"])
    assert result.exit_code == 0, result.output
    modules = read_adapter(tmp_path / "out" / "r.safetensors").modules
    assert {key.rsplit(".", 1)[-1] for key in modules} == {"to_q", "to_v"}
    assert {module.rank for module in modules.values()} == {2}
    bad = runner.invoke(main, ["train", str(recipe_file), "--targets", "to_nothing", "--output", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert bad.output.splitlines()[-1].startswith("Error: targets to_nothing: not found in the base's UNet")
    missing = runner.invoke(main, ["train", str(recipe_file), "--resume", "--output", str(tmp_path / "y")])
    assert missing.exit_code == 1 and "--resume: no checkpoint in" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(mustache_faces, tmp_path):
    """Data-parallel training as users scale it out: `accelerate launch --multi_gpu` starts 2 processes (on CPU
    when there is no GPU). Each trains on its share of every batch; the run fails if the processes' LoRAs differ
    at the end, as they would if the gradients were not averaged."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loramix", "train",
               "--dataset", str(mustache_faces), "--steps", "3", "--batch-size", "2", "--rank", "2",
               "--output", str(tmp_path / "run"), "--name", "ddp", "--sample-steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # only the main process reports
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [(row["step"], row["processes"]) for row in rows] == [(1, 2), (2, 2), (3, 2)]
    assert load_file(str(tmp_path / "run" / "ddp.safetensors"))


@pytest.mark.parametrize("overrides, message", [
    ({"base": "nowhere-to-be-found"}, r"^Error: base nowhere-to-be-found: not 'toy', a diffusers folder"),
    ({"dataset": "/nonexistent/faces"}, r"^Error: /nonexistent/faces: no such dataset folder$"),
    ({"max_timestep": 1200}, r"^Error: max_timestep: 1200 is past the base scheduler's 1000 training timesteps$"),
    ({"min_timestep": 1000}, r"^Error: min_timestep: 1000 leaves no timestep below 1000 to draw$"),
    ({"learning_rate": 1e6, "max_grad_norm": 0.0, "quantize": "none", "steps": 8},
     r"^Error: the loss became (nan|inf) at step \d: try a lower learning_rate"),
])
def test_bad_runs_end_in_one_line(mustache_faces, tmp_path, overrides, message):
    import re

    args = ["train", "--dataset", str(mustache_faces), "--steps", "2", "--batch-size", "2",
            "--output", str(tmp_path / "r")]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        args = [a for i, a in enumerate(args) if a != flag and (i == 0 or args[i - 1] != flag)] + [flag, str(value)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert re.search(message, result.output.strip().splitlines()[-1]), result.output
    assert not (tmp_path / "r" / "r.safetensors").exists()


def test_an_unwritable_output_is_named(mustache_faces, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["train", "--dataset", str(mustache_faces), "--steps", "1",
                                       "--output", str(blocker / "run")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: output {blocker / 'run'}: cannot write there")


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(mustache_faces, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "loramix", "train", "--dataset", str(mustache_faces), "--steps", "60",
               "--batch-size", "2", "--rank", "2", "--quantize", "none", "--output", str(run), "--name", "c"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = run / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr[-1000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted after step ") and "--resume` continues from it" in last
    step = int(last.split("after step ")[1].split(":")[0])
    assert (run / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors").is_file()
    assert not (run / "c.safetensors").exists()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[-1]["step"] == step
    result = CliRunner().invoke(main, command[3:] + ["--resume"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, 61))


@pytest.mark.slow  # two whole runs, the second rendering its final sample grid: what is switched off is the run's
def test_samples_can_be_switched_off_entirely(mustache_faces, tmp_path):
    """sample_every = 0 renders none during the run, and final_samples = false none at its end: a short run on
    a large base is not spent on a sample grid."""
    result = train(recipe(mustache_faces, tmp_path, steps=2, sample_every=0, final_samples=False))
    run = tmp_path / "run"
    assert result.adapter.is_file() and (run / "loss.png").is_file()
    assert not (run / "samples").exists()
    with_final = train(recipe(mustache_faces, tmp_path / "again", steps=2, sample_every=0))
    assert [p.name for p in (with_final.run / "samples").iterdir()] == ["step-000002.png"]


@pytest.mark.slow  # a whole run that samples mid-way: the models come back only for a real sample grid
@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_models_no_step_uses_are_set_aside_and_come_back_for_samples(mustache_faces, tmp_path, train_text_encoder):
    """QLoRA's peak: the VAE (and frozen text encoders) encode the dataset before the UNet loads and are
    dropped then; samples load them again and drop them after."""
    from types import SimpleNamespace

    from loramix.train.loop import _prepare
    from loramix.util.progress import Status

    run = recipe(mustache_faces, tmp_path, quantize="nf4", train_text_encoder=train_text_encoder, flip=True)
    accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
    model, examples, count = _prepare(run, accelerator, lambda line: None, Status())
    pipeline = model.pipeline
    assert count == 8 and examples.latent_mean.shape[0] == 16  # flipped too
    assert pipeline.vae is None and type(pipeline.unet.conv_in).__name__ == "Conv2dNF4"
    assert (pipeline.text_encoder is not None) == train_text_encoder
    assert (examples.text is None) == train_text_encoder
    model.loss(examples, torch.tensor([0, 1]), torch.Generator().manual_seed(0)).backward()
    model.save_samples(tmp_path / "samples.png")
    assert (tmp_path / "samples.png").is_file()
    assert pipeline.vae is None and (pipeline.text_encoder is not None) == train_text_encoder


def test_captions_tokenized_once_condition_exactly_as_the_pipeline_does(mustache_faces, tmp_path):
    """The step's text conditioning (token ids cached per caption) against diffusers' `encode_prompt`, with the
    text encoder's LoRA trained away from zero so it counts."""
    from loramix.models.load import load_pipeline
    from loramix.train.trainee import LoraTrainee, text_conditioning

    pipeline = load_pipeline("toy")
    run = recipe(mustache_faces, tmp_path, train_text_encoder=True, quantize="none")
    trainee = LoraTrainee(pipeline, run, torch.device("cpu"))
    with torch.no_grad():
        for parameter in trainee.text_parameters():
            parameter.normal_(std=0.05)
    captions = ["a face with a mustache", "a sad face on a blue background", "a face with a mustache"]
    expected, _ = pipeline.encode_prompt(captions, torch.device("cpu"), 1, False)
    with torch.no_grad():
        assert torch.equal(trainee.encode_text(captions)["encoder_hidden_states"], expected)
        assert torch.equal(trainee.encode_text(captions[::-1])["encoder_hidden_states"], expected.flip(0))
        assert torch.equal(text_conditioning(pipeline, captions, torch.device("cpu"), 64)["encoder_hidden_states"],
                           expected)
    assert set(trainee._token_ids) == set(captions)
