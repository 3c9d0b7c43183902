"""Composition speed on SD 1.5's real attention shapes, against peft's SVD merge, in one process.

    python bench/bench_compose.py [--repeats 3]

Two random rank-32 adapters (α 16 and 32) on the 128 attention projections of SD 1.5's UNet:
  1. exact compose, reading both files and writing the result included (bar: ≤ 1 s);
  2. rank-32 compose: loramix's QR-reduced SVD against peft's `add_weighted_adapter(combination_type="svd")`,
     which forms every ΔW and runs a full SVD, on the real UNet (random weights) (bar: ≥ 10× faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.compose import compose_exact, compose_svd
from loramix.models.shapes import load_base_shapes

ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")
RANK, WEIGHTS = 32, (0.7, 0.5)


def random_adapter(shapes: dict[str, tuple[int, ...]], alpha: float, seed: int) -> LoraAdapter:
    generator = torch.Generator().manual_seed(seed)
    return LoraAdapter({key: LoraModule(torch.randn(RANK, shape[1], generator=generator) / shape[1] ** 0.5,
                                        torch.randn(shape[0], RANK, generator=generator) * 0.01, alpha)
                        for key, shape in shapes.items()})


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peft_svd_seconds(adapters: list[LoraAdapter], repeats: int):
    """Time peft's SVD combination on the real SD 1.5 UNet holding the same two adapters."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model

    from loramix.models.architectures import builtin_config

    unet = UNet2DConditionModel.from_config(builtin_config("sd15", "unet"))
    targets = [key.removeprefix("unet.") for key in adapters[0].modules]
    model = get_peft_model(unet, LoraConfig(r=RANK, lora_alpha=adapters[0].alphas[0], target_modules=targets),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=RANK, lora_alpha=adapters[1].alphas[0], target_modules=targets))
    layers = dict(model.base_model.model.named_modules())
    with torch.no_grad():
        for name, adapter in zip(("a", "b"), adapters):
            for key, module in adapter.modules.items():
                layer = layers[key.removeprefix("unet.")]
                layer.lora_A[name].weight.copy_(module.down)
                layer.lora_B[name].weight.copy_(module.up)

    def merge():
        if "svd" in model.peft_config:
            model.delete_adapter("svd")
        model.add_weighted_adapter(["a", "b"], list(WEIGHTS), "svd", combination_type="svd", svd_rank=RANK)
        return {f"unet.{path}": layer.get_delta_weight("svd") for path, layer in layers.items()
                if hasattr(layer, "lora_A") and "svd" in layer.lora_A}

    return timed(merge, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    shapes = {k: v for k, v in load_base_shapes("sd15").weight_shapes.items()
              if k.startswith("unet.") and k.endswith(ATTENTION)}
    adapters = [random_adapter(shapes, alpha, seed) for seed, alpha in enumerate((16.0, 32.0))]
    print(f"SD 1.5 UNet attention: {len(shapes)} modules, two rank-{RANK} adapters, "
          f"{torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as folder:
        inputs = [Path(folder) / f"{name}.safetensors" for name in "ab"]
        for adapter, path in zip(adapters, inputs):
            write_adapter(adapter, path)

        def exact_from_files():
            loaded = [read_adapter(path) for path in inputs]
            result = compose_exact(list(zip(loaded, WEIGHTS)))
            write_adapter(result, Path(folder) / "out.safetensors")
            return result

        seconds, _ = timed(exact_from_files, args.repeats)
        print(f"exact compose (read 2 files + compose + write): {seconds:.3f} s  (bar ≤ 1 s)")

    ours_seconds, (ours, report) = timed(lambda: compose_svd(list(zip(adapters, WEIGHTS)), RANK), args.repeats)
    peft_seconds, theirs = peft_svd_seconds(adapters, repeats=1)
    differences = [((ours.modules[k].delta() - theirs[k]).norm() / theirs[k].norm()).item() for k in theirs]
    print(f"rank-{RANK} SVD compose: loramix {ours_seconds:.3f} s, peft svd {peft_seconds:.2f} s, "
          f"ratio {peft_seconds / ours_seconds:.1f}×  (bar ≥ 10×)")
    print(f"  same truncation: largest relative ΔW difference to peft {max(differences):.1e}; "
          f"truncation error {report.overall_error:.3f} overall")


if __name__ == "__main__":
    main()
