"""Composition arithmetic: exact Σ wᵢ·ΔWᵢ, checked by hand, against diffusers' set_adapters, and against peft."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner

from loramix.cli import main
from loramix.errors import IncompatibleAdaptersError, LoramixError
from loramix.formats.read import read_adapter
from loramix.formats.write import write_adapter
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.compose import compose_exact, compose_merge, compose_svd
from loramix.testing import fused, outputs, random_adapter, unet_inputs


def delta_sum(weighted) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for adapter, weight in weighted:
        for key, module in adapter.modules.items():
            total[key] = total.get(key, 0) + weight * module.delta(torch.float64)
    return total


def assert_deltas(adapter: LoraAdapter, expected: dict[str, torch.Tensor], rtol=1e-5) -> None:
    assert sorted(adapter.modules) == sorted(expected)
    for key, delta in expected.items():
        torch.testing.assert_close(adapter.modules[key].delta(torch.float64), delta, rtol=rtol, atol=1e-7)


def test_by_hand():
    # ΔW_a = (2/1)·[1, 2]ᵀ·[1, 0] ; ΔW_b = (1/1)·[0, 1]ᵀ·[3, 1]
    a = LoraAdapter({"unet.m": LoraModule(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [2.0]]), alpha=2.0)})
    b = LoraAdapter({"unet.m": LoraModule(torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0], [1.0]]), alpha=1.0)})
    result = compose_exact([(a, 0.5), (b, -2.0)])
    module = result.modules["unet.m"]
    assert (module.rank, module.alpha) == (2, 2.0)
    expected = 0.5 * torch.tensor([[2.0, 0.0], [4.0, 0.0]]) - 2.0 * torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    assert torch.equal(module.delta(), expected)  # [[1, 0], [-4, -2]]


SHAPES = {"unet.a": (24, 16), "unet.b": (32, 24), "unet.conv1": (8, 4, 3, 3), "unet.conv0": (8, 4, 1, 1),
          "text_encoder.text_model.q_proj": (16, 16)}


@pytest.mark.parametrize("case", ["different ranks", "disjoint", "overlapping", "negative", "zero", "single",
                                  "three"])
def test_exact_compose_is_the_weighted_sum_of_deltas(case):
    keys = list(SHAPES)
    a = random_adapter(SHAPES, rank=4, alpha=8, seed=1)
    b = random_adapter(SHAPES, rank=2, alpha=1, seed=2)
    c = random_adapter({k: SHAPES[k] for k in keys[2:]}, rank=3, alpha=3, seed=3)
    weighted = {
        "different ranks": [(a, 0.7), (b, 0.5)],
        "disjoint": [(random_adapter({k: SHAPES[k] for k in keys[:2]}, 2, 2, 4), 1.0),
                     (random_adapter({k: SHAPES[k] for k in keys[2:]}, 3, 6, 5), 0.3)],
        "overlapping": [(a, 0.7), (c, 0.5)],
        "negative": [(a, 1.0), (b, -1.0)],
        "zero": [(a, 0.0), (b, 1.0)],
        "single": [(b, 0.25)],
        "three": [(a, 0.2), (b, 0.3), (c, -0.4)],
    }[case]
    result = compose_exact(weighted)
    assert_deltas(result, delta_sum(weighted))
    for key, module in result.modules.items():  # ranks add up where targets overlap
        assert module.rank == sum(x.modules[key].rank for x, _ in weighted if key in x.modules)
        assert module.scale == 1.0


def test_compose_equals_diffusers_set_adapters(unet, clip, unet_attention_shapes, clip_attention_shapes, tmp_path):
    """The central promise: a composed file applied alone changes the model as diffusers does with both
    adapters active at their weights."""
    from diffusers import StableDiffusionPipeline as Pipeline
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    shapes = {**unet_attention_shapes, **clip_attention_shapes}
    a = random_adapter(shapes, rank=4, alpha=2, seed=11)
    b = random_adapter({k: v for k, v in shapes.items() if "to_k" not in k}, rank=8, alpha=16, seed=12)
    write_adapter(a, tmp_path / "a.safetensors")
    write_adapter(b, tmp_path / "b.safetensors")
    theirs_unet, theirs_clip = copy.deepcopy(unet), copy.deepcopy(clip)
    for name in ("a", "b"):
        state_dict, alphas, metadata = Pipeline.lora_state_dict(str(tmp_path / f"{name}.safetensors"),
                                                                return_lora_metadata=True)
        Pipeline.load_lora_into_unet(state_dict, alphas, theirs_unet, adapter_name=name, metadata=metadata)
        Pipeline.load_lora_into_text_encoder(state_dict, alphas, theirs_clip, adapter_name=name, metadata=metadata)
    theirs_unet.set_adapters(["a", "b"], weights=[0.7, 0.5])
    set_adapters_for_text_encoder(["a", "b"], theirs_clip, text_encoder_weights=[0.7, 0.5])

    composed = compose_exact([(read_adapter(tmp_path / "a.safetensors"), 0.7),
                              (read_adapter(tmp_path / "b.safetensors"), 0.5)])
    ours = outputs(fused(unet, composed, "unet"), fused(clip, composed, "text_encoder"))
    theirs = outputs(theirs_unet, theirs_clip)
    base = outputs(unet, clip)
    for mine, reference, before in zip(ours, theirs, base):
        assert (reference - before).abs().max() > 1e-3  # both adapters really change the output
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def peft_two_adapters(seed: int = 0, rank_b: int = 2):
    """A small peft model holding adapters "a" (r 4, α 8) and "b" (r `rank_b`, α 2) with random A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"],
                                            init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=rank_b, lora_alpha=2, target_modules=["0", "2"], init_lora_weights=False))
    return model


def adapter_from_peft(model, name: str) -> LoraAdapter:
    modules = {}
    for path, layer in model.base_model.model.named_modules():
        if hasattr(layer, "lora_A") and name in layer.lora_A:
            modules[f"unet.{path}"] = LoraModule(layer.lora_A[name].weight.detach().clone(),
                                                 layer.lora_B[name].weight.detach().clone(),
                                                 alpha=layer.lora_alpha[name])
    return LoraAdapter(modules)


def peft_deltas(model, name: str) -> dict[str, torch.Tensor]:
    return {f"unet.{path}": layer.get_delta_weight(name).double()
            for path, layer in model.base_model.model.named_modules() if hasattr(layer, "lora_A")
            and name in layer.lora_A}


def test_peft_linear_combination_is_not_the_weighted_sum():
    model = peft_two_adapters(rank_b=4)  # peft's linear combination takes equal ranks only
    weighted = [(adapter_from_peft(model, "a"), 0.7), (adapter_from_peft(model, "b"), 0.5)]
    model.add_weighted_adapter(["a", "b"], [0.7, 0.5], "linear", combination_type="linear")
    exact = delta_sum(weighted)
    assert_deltas(compose_exact(weighted), exact)
    linear = peft_deltas(model, "linear")
    for key in exact:  # peft adds the A's and the B's apart: cross terms, far from the sum
        error = (linear[key] - exact[key]).norm() / exact[key].norm()
        assert error > 0.1, (key, error)


@pytest.mark.parametrize("rank", [1, 3, 6, 10])
def test_svd_compose_is_the_best_low_rank_approximation(rank):
    weighted = [(random_adapter(SHAPES, 4, 8, 1), 0.7), (random_adapter(SHAPES, 2, 1, 2), 0.5)]
    result, report = compose_svd(weighted, rank)
    tails, totals = 0.0, 0.0
    for key, exact in delta_sum(weighted).items():
        u, s, vh = torch.linalg.svd(exact.flatten(1), full_matrices=False)
        k = min(rank, 6, *exact.flatten(1).shape)  # no more than the rank ΔW can have
        best = (u[:, :k] * s[:k]) @ vh[:k]
        assert result.modules[key].rank == k
        torch.testing.assert_close(result.modules[key].delta(torch.float64).flatten(1), best, rtol=1e-5, atol=1e-6)
        error = (s[k:].square().sum() / s.square().sum()).sqrt().item()
        assert report.module_errors[key] == pytest.approx(error, abs=1e-6)
        tails, totals = tails + s[k:].square().sum().item(), totals + s.square().sum().item()
    assert report.overall_error == pytest.approx((tails / totals) ** 0.5, abs=1e-6)
    if rank >= 6:
        assert report.overall_error < 1e-6


def test_svd_compose_matches_peft_svd_combination():
    model = peft_two_adapters()
    weighted = [(adapter_from_peft(model, "a"), 0.7), (adapter_from_peft(model, "b"), 0.5)]
    model.add_weighted_adapter(["a", "b"], [0.7, 0.5], "svd", combination_type="svd", svd_rank=3)
    ours, _ = compose_svd(weighted, 3)
    for key, theirs in peft_deltas(model, "svd").items():
        torch.testing.assert_close(ours.modules[key].delta(torch.float64), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["ties", "dare", "dare_ties"])
def test_merges_are_peft_merges_of_the_full_deltas(method):
    from peft.utils import merge_utils

    weighted = [(random_adapter(SHAPES, 4, 8, 1), 0.7), (random_adapter(SHAPES, 2, 1, 2), 0.5)]
    before = torch.random.get_rng_state()
    result, report = compose_merge(weighted, method, rank=64, density=0.5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is untouched
    again, _ = compose_merge(weighted, method, rank=64, density=0.5, seed=3)
    function = {"ties": merge_utils.ties, "dare": merge_utils.dare_linear, "dare_ties": merge_utils.dare_ties}[method]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        for key in weighted[0][0].modules:
            expected = function([a.modules[key].delta() for a, _ in weighted], torch.tensor([0.7, 0.5]), 0.5)
            torch.testing.assert_close(result.modules[key].delta(), expected, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(again.modules[key].delta(), result.modules[key].delta())
    assert report.overall_error < 1e-6  # rank 64 keeps every merged matrix whole


def test_mismatched_shapes_name_the_module_and_both_inputs():
    a = random_adapter({"unet.x": (8, 4)}, 2, 2, 0)
    b = random_adapter({"unet.x": (8, 6)}, 2, 2, 1)
    with pytest.raises(IncompatibleAdaptersError, match=r"module unet.x: a.safetensors .* b.safetensors"):
        compose_exact([(a, 1), (b, 1)], names=["a.safetensors", "b.safetensors"])


def test_nan_inputs_are_refused_by_name():
    a = random_adapter({"unet.x": (8, 4)}, 2, 2, 0)
    a.modules["unet.x"].up[0, 0] = float("nan")
    with pytest.raises(LoramixError, match="bad.safetensors: module unet.x has NaN"):
        compose_exact([(a, 1)], names=["bad.safetensors"])


@pytest.mark.parametrize("call, message", [
    (lambda a: compose_exact([]), "at least one"),
    (lambda a: compose_svd([(a, 1)], 0), "rank must be"),
    (lambda a: compose_merge([(a, 1)], "ties", 2, density=0), "density"),
    (lambda a: compose_merge([(a, 1)], "magic", 2), "unknown merge method"),
    (lambda a: compose_exact([(a, float("inf"))]), "not a finite number"),
])
def test_bad_requests_are_refused(call, message):
    with pytest.raises(LoramixError, match=message):
        call(random_adapter({"unet.x": (8, 4)}, 2, 2, 0))


def test_cli_compose_writes_the_exact_sum_in_either_naming(tmp_path, unet_attention_shapes):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_adapter(random_adapter(unet_attention_shapes, 4, 2, 1), a, format="kohya")
    write_adapter(random_adapter(unet_attention_shapes, 2, 2, 2), b)
    for file_format in ("diffusers", "kohya"):
        out = tmp_path / f"ab-{file_format}.safetensors"
        result = CliRunner().invoke(main, ["compose", f"{a}:0.7", f"{b}:-0.5", "-o", str(out),
                                           "--format", file_format])
        assert result.exit_code == 0, result.output
        note = "" if file_format == "kohya" else (
            "note: ComfyUI skips the UNet attention projections (to_q, to_k, to_v, to_out) of diffusers naming: it "
            "maps them only under diffusers' old processor names ('lora key not loaded'). --format kohya loads in "
            "A1111, ComfyUI, kohya and diffusers.\n")
        assert result.output == f"wrote {out}: 32 modules, rank 6, {file_format} naming, float32\n{note}"
        composed = read_adapter(out)
        assert composed.source_format == file_format
        assert composed.metadata["loramix_composed_from"] == f"{a}:0.7 {b}:-0.5"
        assert_deltas(composed, delta_sum([(read_adapter(a), 0.7), (read_adapter(b), -0.5)]))


def test_cli_compose_rank_reports_the_truncation_error(tmp_path):
    from pathlib import Path

    samples = Path(__file__).parent.parent / "samples"
    out = tmp_path / "r2.safetensors"
    result = CliRunner().invoke(main, ["compose", f"{samples / 'random-a.kohya.safetensors'}:0.7",
                                       f"{samples / 'random-b.diffusers.safetensors'}:0.5", "--rank", "2",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"wrote {out}: 176 modules, rank 2, kohya naming, float16"  # the default naming
    assert lines[1].startswith("truncation error (relative Frobenius): ")
    assert read_adapter(out).ranks == [2]


def test_unet_output_is_unchanged_by_a_zero_weight(unet, unet_attention_shapes):
    a = random_adapter(unet_attention_shapes, 4, 4, 1)
    composed = compose_exact([(a, 0.0)])
    sample, timesteps, text = unet_inputs()
    with torch.no_grad():
        assert torch.equal(fused(unet, composed, "unet")(sample, timesteps, text).sample,
                           unet(sample, timesteps, text).sample)
