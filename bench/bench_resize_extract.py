"""resize and extract at SD 1.5's shapes against kohya's scripts' method, in one process.

    python bench/bench_resize_extract.py [--repeats 1] [--rank 32]

kohya's `resize_lora.py` forms every module's out × in ΔW and runs a full SVD (`torch.linalg.svd`, full
matrices); `extract_lora_from_models.py` does the same on each weight difference and clamps at the 0.99
quantile. The baselines below are those methods, written here; the rank rules are kohya's for both sides.

1. resize: a random rank-R LoRA with decaying singular values on SD 1.5's 128 UNet attention projections and
   72 text-encoder projections; fixed rank 8, then sv_fro 0.9 and sv_ratio 4. Time ratio and the ranks kept.
2. extract: two checkpoints (SD 1.5's attention projections, base weights random, the fine-tune a rank-R
   change plus small noise) in safetensors files; rank 16, then sv_fro 0.9. Time ratio and the ranks kept.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.formats.checkpoint import CheckpointFile
from loramix.jobs.extract import extract_lora
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.resize import kept_rank, resize_adapter
from loramix.models.shapes import load_base_shapes

PROJECTIONS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".q_proj", ".k_proj", ".v_proj", ".out_proj")


def sd15_shapes(unet_only: bool = False) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in load_base_shapes("sd15").weight_shapes.items()
            if k.endswith(PROJECTIONS) and (k.startswith("unet.") or not unet_only)}


def decaying_lora(shapes, rank: int, seed: int = 0) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i, (key, (out_features, in_features)) in enumerate(shapes.items()):
        decay = 0.75 + 0.2 * (i % 5) / 4  # modules differ in how fast their spectra fall
        spectrum = decay ** torch.arange(float(rank))
        modules[key] = LoraModule(torch.randn(rank, in_features, generator=g) / in_features ** 0.5,
                                  torch.randn(out_features, rank, generator=g) * spectrum * 0.01, float(rank) / 2)
    return LoraAdapter(modules)


def kohya_resize(adapter: LoraAdapter, rank: int | None, method: str | None, param: float | None) -> dict[str, int]:
    """resize_lora.py's method: ΔW formed, full SVD, kohya's rank rule, U·S and Vh kept."""
    ranks = {}
    for key, module in adapter.modules.items():
        weight = module.up.float() @ module.down.float()
        u, s, vh = torch.linalg.svd(weight)
        k = kept_rank(s, len(s), rank if rank is not None else module.rank, method, param)
        _ = (u[:, :k] @ torch.diag(s[:k])).contiguous(), vh[:k].contiguous()
        ranks[key] = k
    return ranks


def kohya_extract(tuned: Path, base: Path, rank: int, method: str | None, param: float | None) -> dict[str, int]:
    """extract_lora_from_models.py's method on the same files: full SVD per difference, 0.99 quantile clamp."""
    ranks = {}
    with safe_open(str(tuned), framework="pt") as t, safe_open(str(base), framework="pt") as b:
        for name in t.keys():
            diff = t.get_tensor(name).float() - b.get_tensor(name).float()
            u, s, vh = torch.linalg.svd(diff)
            k = kept_rank(s, len(s), rank, method, param)
            up, down = u[:, :k] @ torch.diag(s[:k]), vh[:k]
            limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.99)
            _ = up.clamp(-limit, limit), down.clamp(-limit, limit)
            ranks[CheckpointFile(tuned, None).module_of(name)] = k
    return ranks


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def agreement(ours: dict[str, int], theirs: dict[str, int]) -> str:
    same = sum(ours[k] == theirs[k] for k in theirs)
    return f"same rank in {same}/{len(theirs)} modules (ranks kept {min(ours.values())}–{max(ours.values())})"


def bench_resize(rank: int) -> None:
    adapter = decaying_lora(sd15_shapes(), rank)
    print(f"resize: SD 1.5 UNet + text-encoder projections, {len(adapter.modules)} modules at rank {rank}")
    for label, new_rank, method, param in (("rank 8", 8, None, None), ("sv_fro 0.9", None, "sv_fro", 0.9),
                                           ("sv_ratio 4", None, "sv_ratio", 4.0)):
        ours_s, (resized, _) = timed(resize_adapter, adapter, new_rank, method, param)
        kohya_s, kohya_ranks = timed(kohya_resize, adapter, new_rank, method, param)
        ours = {k: m.rank for k, m in resized.modules.items()}
        print(f"  {label:<11} loramix {ours_s:6.2f} s, kohya's method {kohya_s:6.2f} s, ratio "
              f"{kohya_s / ours_s:5.1f}×; {agreement(ours, kohya_ranks)}")


def bench_extract(rank: int) -> None:
    shapes = sd15_shapes(unet_only=True)
    g = torch.Generator().manual_seed(1)
    change = decaying_lora(shapes, rank, seed=2)
    with tempfile.TemporaryDirectory() as folder:
        base, tuned = Path(folder) / "base.safetensors", Path(folder) / "tuned.safetensors"
        weights = {k: torch.randn(*shape, generator=g) * 0.02 for k, shape in shapes.items()}
        save_file({f"model.diffusion_model.{_sgm(k)}.weight": w for k, w in weights.items()}, str(base))
        save_file({f"model.diffusion_model.{_sgm(k)}.weight": w + change.modules[k].delta()
                   + 1e-5 * torch.randn(*w.shape, generator=g) for k, w in weights.items()}, str(tuned))
        print(f"extract: two SD 1.5 checkpoints of {len(shapes)} attention projections, the fine-tune a rank-{rank} "
              "change plus noise")
        for label, new_rank, method, param in (("rank 16", 16, None, None), ("sv_fro 0.9", rank, "sv_fro", 0.9)):
            ours_s, (adapter, _) = timed(extract_lora, tuned, base, new_rank, None, method, param)
            kohya_s, kohya_ranks = timed(kohya_extract, tuned, base, new_rank, method, param)
            ours = {k: m.rank for k, m in adapter.modules.items()}
            print(f"  {label:<11} loramix {ours_s:6.2f} s, kohya's method {kohya_s:6.2f} s, ratio "
                  f"{kohya_s / ours_s:5.1f}×; {agreement(ours, kohya_ranks)}")


_SGM_OF: dict[str, str] = {}


def _sgm(key: str) -> str:
    """An SD 1.5 attention module's original-layout (SGM) name, found through loramix's own mapping."""
    if not _SGM_OF:
        names = [f"{kind}.{i}.{j}" for kind, count in (("input_blocks", 12), ("output_blocks", 12))
                 for i in range(count) for j in range(3)] + ["middle_block.1"]
        rest = ("proj_in", "proj_out", *(f"transformer_blocks.0.attn{a}.{p}" for a in (1, 2)
                                         for p in ("to_q", "to_k", "to_v", "to_out.0")))
        probe = CheckpointFile(Path("x"), None)
        for name in names:
            for tail in rest:
                module = probe.module_of(f"model.diffusion_model.{name}.{tail}.weight")
                if module is not None:
                    _SGM_OF.setdefault(module, f"{name}.{tail}")
    return _SGM_OF[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} torch threads")
    bench_resize(args.rank)
    bench_extract(args.rank)


if __name__ == "__main__":
    main()
