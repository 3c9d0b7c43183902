"""`loramix resize`: the best lower-rank LoRA per module, with kohya's dynamic rank rules, checked against a full
SVD of each ΔW in float64 (kohya's method)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.resize import resize_adapter
from loramix.testing import assert_clean_error


def decaying_adapter(seed=0) -> LoraAdapter:
    """Rank-8 modules whose singular values decay at different speeds, linear and conv."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i, (shape, decay) in enumerate([((48, 40), 0.5), ((40, 48), 0.8), ((32, 16, 3, 3), 0.3)]):
        down = torch.randn(8, *shape[1:], generator=g, dtype=torch.float64)
        spectrum = decay ** torch.arange(8.0, dtype=torch.float64)
        up = torch.randn(shape[0], 8, generator=g, dtype=torch.float64) * spectrum
        if len(shape) == 4:
            up = up[:, :, None, None]
        modules[f"unet.m{i}"] = LoraModule(down.float(), up.float(), 4.0)
    return LoraAdapter(modules)


def kohya_rank(delta: torch.Tensor, cap: int, method: str, param: float) -> int:
    """kohya resize_lora.py's rule on the full SVD of the dense ΔW/scale, written from its definition."""
    s = torch.linalg.svdvals(delta.flatten(1))
    n = len(s)
    if method == "sv_ratio":
        index = int((s > s[0] / param).sum())
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), param)) + 1
    else:
        index = int(torch.searchsorted(torch.cumsum(s ** 2, 0) / (s ** 2).sum(), param ** 2)) + 1
    return min(max(1, min(index, n - 1)) + 1, cap)


def test_fixed_rank_is_the_best_approximation_with_the_same_scale():
    adapter = decaying_adapter()
    resized, report = resize_adapter(adapter, rank=3)
    for key, module in adapter.modules.items():
        delta = module.delta(torch.float64).flatten(1)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vh[:3]
        new = resized.modules[key]
        assert new.rank == 3 and new.scale == pytest.approx(module.scale)
        torch.testing.assert_close(new.delta(torch.float64).flatten(1), best, rtol=1e-4, atol=1e-5)
        entry = next(m for m in report.modules if m.key == key)
        assert entry.fro_retained == pytest.approx(float(s[:3].norm() / s.norm()), rel=1e-6)


@pytest.mark.parametrize("method, param", [("sv_ratio", 4.0), ("sv_cumulative", 0.7), ("sv_fro", 0.9),
                                           ("sv_fro", 0.99)])
def test_dynamic_ranks_are_kohyas(method, param):
    adapter = decaying_adapter(seed=1)
    resized, _ = resize_adapter(adapter, rank=None, method=method, param=param)
    for key, module in adapter.modules.items():
        expected = min(kohya_rank(module.delta(torch.float64) / module.scale, 8, method, param), module.rank)
        assert resized.modules[key].rank == expected, (key, method, param)


def test_cli_resize_reports_and_writes(tmp_path):
    source, out = tmp_path / "a.safetensors", tmp_path / "a3.safetensors"
    write_adapter(decaying_adapter(), source)
    result = CliRunner().invoke(main, ["resize", str(source), "--rank", "3", "-o", str(out), "--verbose"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("unet.m0: rank 8 → 3, ") and lines[0].endswith("% of the Frobenius norm kept")
    assert lines[-1].startswith(f"wrote {out}: 3 modules, rank 3; Frobenius norm kept ")
    assert read_adapter(out).ranks == [3]


def test_cli_resize_refuses_a_dynamic_method_without_its_parameter(tmp_path):
    source, out = tmp_path / "a.safetensors", tmp_path / "x.safetensors"
    write_adapter(decaying_adapter(), source)
    result = CliRunner().invoke(main, ["resize", str(source), "--dynamic", "sv_fro", "-o", str(out)])
    assert_clean_error(result, "--dynamic sv_fro needs --dynamic-param: a share in (0, 1], e.g. 0.9")
    assert not out.exists()
