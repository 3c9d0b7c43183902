"""QLoRA on SD 1.5's real UNet (random weights): weight memory, training-step peak memory, step time, output error.

    python bench/bench_quantize.py [--config loramix/architectures/sd1/unet/config.json] [--steps 2]

Three bases, each in its own process so that each peak is its own: fp32 (`none`), NF4 on the Linear layers only,
and NF4 on Linear and Conv2d layers. Each trains a rank-4 LoRA on to_q, to_k, to_v, to_out.0 for `--steps` steps
(batch 1, a 64×64 latent, text states (1, 77, 768)). Peak memory is the GPU's peak allocation when there is a GPU,
else the peak RSS of the steps (Linux VmHWM, reset just before them), shown as the growth over the RSS before.
Goal: NF4 UNet weights ≤ 0.15× of fp32 (≤ 0.30× of bf16); NF4 on the Linear layers alone reaches ~0.73×.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

VARIANTS = {"none": ("none", False), "nf4 linear-only": ("nf4", False), "nf4": ("nf4", True)}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
GOAL_FP32, GOAL_BF16 = 0.15, 0.30
MB = 2**20


def builtin_config() -> Path:
    return Path(str(resources.files("loramix") / "architectures" / "sd1" / "unet" / "config.json"))


def memory_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in kB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0])


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else memory_kb("VmHWM") * 1024


def worker(args) -> None:
    """One variant, in this process: build, quantize, render once, train, and write the numbers as JSON."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    from loramix.models.quantize import quantize_model

    mode, convs = VARIANTS[args.worker]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def log(message: str) -> None:
        print(f"  [{args.worker}] {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    torch.manual_seed(0)  # the same random UNet for every variant
    unet = UNet2DConditionModel.from_config(json.loads(Path(args.config).read_text())).to(device).eval()
    report = quantize_model(unet, mode, quantize_convs=convs)
    log(f"built and quantized in {time.perf_counter() - start:.0f} s: {report.quantized_linears} linears, "
        f"{report.quantized_convs} convs")

    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 64, 64, generator=generator).to(device)
    text = torch.randn(1, 77, 768, generator=generator).to(device)
    noise = torch.randn(1, 4, 64, 64, generator=generator).to(device)
    timestep = torch.tensor([500], device=device)
    with torch.no_grad():
        torch.save(unet(latent, timestep, text).sample.cpu(), args.output)
    log("rendered once (eval, no_grad)")

    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights="gaussian"), unet)
    unet.train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else memory_kb("VmRSS") * 1024
    reset_peak(device)
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        loss = (unet(latent, timestep, text).sample - noise).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        log(f"step {step + 1}/{args.steps}: {times[-1]:.1f} s, loss {loss.item():.4f}")
    result = dict(base_bytes=report.bytes_after, fp32_bytes=report.bytes_before, before=before,
                  peak=peak_bytes(device), peak_growth=peak_bytes(device) - before,
                  # the first step pays one-off costs (allocations, kernel choice): time the others when there are
                  step_s=statistics.median(times[1:] or times), device=str(device))
    Path(args.output).with_suffix(".json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=builtin_config(),
                        help="A diffusers UNet config.json (default: SD 1.5's, shipped with loramix).")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per variant (the first is warm-up).")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.worker:
        return worker(args)

    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    print(f"UNet {args.config.name}, LoRA rank 4 on {', '.join(TARGETS)}, batch 1, 64×64 latent, "
          f"{args.steps} steps, {device}", flush=True)
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name in VARIANTS:
            print(f"{name}: running…", flush=True)
            output = Path(folder) / f"{name.replace(' ', '_')}.pt"
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--config", str(args.config), "--steps", str(args.steps),
                            "--worker", name, "--output", str(output)], check=True)
            print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
            results[name] = json.loads(output.with_suffix(".json").read_text())
            outputs[name] = torch.load(output)

    fp32 = results["none"]["base_bytes"]
    peak = "peak alloc" if results["none"]["device"].startswith("cuda") else "peak RSS"
    print()
    print(f"{'variant':<17}{'weights MB':>11}{'× fp32':>8}{'× bf16':>8}{peak + ' MB':>13}{'× none':>8}"
          f"{'growth MB':>11}{'step s':>8}{'× none':>8}{'rel. error':>12}")
    none = results["none"]
    for name, result in results.items():
        weights = result["base_bytes"]
        error = ((outputs[name] - outputs["none"]).norm() / outputs["none"].norm()).item()
        print(f"{name:<17}{weights / MB:>11.0f}{weights / fp32:>8.3f}{weights / (fp32 / 2):>8.3f}"
              f"{result['peak'] / MB:>13.0f}{result['peak'] / none['peak']:>8.2f}{result['peak_growth'] / MB:>11.0f}"
              f"{result['step_s']:>8.1f}{result['step_s'] / none['step_s']:>8.2f}{error:>12.4f}")
    nf4 = results["nf4"]["base_bytes"] / fp32
    linear_only = results["nf4 linear-only"]["base_bytes"] / fp32
    print()
    print(f"goal: NF4 UNet weights ≤ {GOAL_FP32}× fp32 (≤ {GOAL_BF16}× bf16): {nf4:.3f}× fp32, {2 * nf4:.3f}× bf16 "
          f"— {'met' if nf4 <= GOAL_FP32 else 'NOT met'}")
    print(f"      NF4 on the Linear layers alone: {linear_only:.3f}× fp32 (expected ~0.73×)")
    print(f"weights: the base's parameters, buffers and quant states as stored (LoRA excluded); {peak}: the "
          f"training steps' peak, whole process; growth: that peak over the memory held just before the steps;")
    print("rel. error: ‖out − out_fp32‖ / ‖out_fp32‖ of the base's output, one eval forward on the same inputs")


if __name__ == "__main__":
    main()
