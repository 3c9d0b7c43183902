"""Tiny real models and random LoRAs made for them, and the checks the tests share; the benchmarks use them too.

The models are diffusers' UNet2DConditionModel and transformers' CLIPTextModel at toy sizes, built from
kwargs in code as diffusers' own tests build theirs; nothing here is a mock.
"""

from __future__ import annotations

import copy

import torch

from loramix.lora.adapter import CLIP_LEVEL, LoraAdapter, LoraModule
from loramix.util.progress import Status

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_clip(seed: int = 0, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=100, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, projection_dim=hidden_size,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval()


class RecordingStatus(Status):
    """A loader's status that keeps what it was told: its lines, and each bar's label and length."""

    def __init__(self):
        self.lines: list[str] = []
        self.bars: list[tuple[str, int]] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    def bar(self, items, what):
        self.bars.append((what, len(items)))
        return items


def weight_shapes(model, component: str, kinds: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Weight shapes keyed as adapters name modules: text-encoder paths in their `text_model.` spelling."""
    level = CLIP_LEVEL if component.startswith("text_encoder") and not hasattr(model, "text_model") else ""
    return {f"{component}.{level}{name}": tuple(m.weight.shape) for name, m in model.named_modules()
            if any(name.endswith("." + k) for k in kinds) and hasattr(m, "weight")}


def random_adapter(shapes: dict[str, tuple[int, ...]], rank: int, alpha: float, seed: int,
                   dtype=torch.float32) -> LoraAdapter:
    """A LoRA with non-zero A and B for every module in `shapes`."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for key, shape in shapes.items():
        out_features, in_shape = shape[0], shape[1:]
        down = torch.randn(rank, *in_shape, generator=generator) / in_shape[0] ** 0.5
        up = torch.randn(out_features, rank, *([1, 1] if len(shape) == 4 else []), generator=generator) * 0.1
        modules[key] = LoraModule(down=down.to(dtype), up=up.to(dtype), alpha=alpha)
    return LoraAdapter(modules)


def toy_attention_shapes() -> dict[str, tuple[int, ...]]:
    """The shipped toy UNet's attention weight shapes, read from its config (no weights loaded)."""
    from loramix.models.load import bundled_base_path
    from loramix.models.shapes import load_base_shapes

    ends = tuple("." + kind for kind in UNET_ATTENTION)
    return {key: shape for key, shape in load_base_shapes(bundled_base_path()).weight_shapes.items()
            if key.startswith("unet.") and key.endswith(ends)}


def write_toy_lora(path, seed: int, rank: int = 4, scale: float = 1.0, metadata: dict[str, str] | None = None):
    """A random UNet-attention LoRA that fits the toy base, its B scaled by `scale` (bigger: a visible change)."""
    from loramix.formats.write import write_adapter

    adapter = random_adapter(toy_attention_shapes(), rank, float(rank), seed)
    for module in adapter.modules.values():
        module.up = module.up * scale
    return write_adapter(adapter, path, metadata=metadata)


# --- `loramix serve` in a real process, and a real browser to look at it -------------------------------------

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver: nothing is downloaded
CHROMIUM = "/usr/bin/chromium"


def start_server(folders: list[str], cwd, log, base: str = "toy", env: dict | None = None,
                 sigint_ignored: bool = False):
    """`loramix serve` on 127.0.0.1 and a free port, started in its own process with its stderr going to the
    file `log`: (process, url). The caller stops it (`stop_server`). `sigint_ignored` starts it as a shell
    starts a background job, with SIGINT ignored."""
    import os
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "loramix", "serve", "--base", base, "--port", "0"]
    for folder in folders:
        command += ["--loras", str(folder)]
    with open(log, "w") as errors:
        # PYTHONFAULTHANDLER: a server that will not stop dumps every thread's stack into `log` (stop_server)
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=errors, text=True,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
                                   preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                                   if sigint_ignored else None)
    line = process.stdout.readline()  # the address, printed once the socket is bound; "" if it died
    if not line.startswith("loramix serve: http://"):
        process.kill()
        process.wait()
        raise RuntimeError(f"loramix serve did not start: {line!r} {open(log).read()[-2000:]}")
    return process, line.split()[2]


def stop_server(process) -> int:
    """Stop a server `start_server` started (Ctrl-C, as a user does); its exit code."""
    import signal
    import subprocess

    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # the stacks of its threads go to its log (PYTHONFAULTHANDLER)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def headless_chromium(download_dir=None, width: int = 1280, height: int = 1400):
    """Debian's chromium, headless, driven through its own chromedriver (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    if download_dir is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header and tensor bytes. Files written in two processes compare by these, not
    byte for byte: safetensors orders the header's keys differently from one process to the next."""
    import json

    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Serve an ASGI app with uvicorn on a free port in a background thread of this process: (url, stop)."""
    import socket
    import threading
    import time

    import uvicorn

    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        listener.close()

    return f"http://{host}:{listener.getsockname()[1]}/", stop


def fused(model, adapter: LoraAdapter, component: str, weight: float = 1.0):
    """A copy of `model` with W + weight·ΔW for every module of `component` in the adapter."""
    from loramix.models.fuse import fuse_into

    model = copy.deepcopy(model)
    fuse_into(model, adapter.of_component(component), weight)
    return model


def unet_inputs(seed: int = 1, cross_attention_dim: int = 32):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 5, cross_attention_dim, generator=generator)
    return sample, torch.tensor([10, 500]), text


def outputs(unet, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny UNet's and CLIP's outputs on fixed inputs: what two models must agree on to count as equal."""
    sample, timesteps, text = unet_inputs()
    with torch.no_grad():
        return unet(sample, timesteps, text).sample, clip(torch.tensor([[0, 5, 9, 1]])).last_hidden_state


def assert_clean_error(result, *fragments: str) -> None:
    """A CLI result that failed as loramix promises: exit 1, one `Error: ` line holding every fragment, no
    traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
