"""Activation-matched fusion (Mix-of-Show's gradient fusion in closed form): the solve against a reference
written from its objective, what it keeps and removes, the recording of layer inputs, and `compose --method
fusion` with its one-line errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from loramix.cli import main
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.fusion import compose_fusion, fusable_keys, fused_delta
from loramix.render.activations import input_grams
from loramix.testing import assert_clean_error


def reference_fusion(base: torch.Tensor, deltas, inputs, ridge: float) -> torch.Tensor:
    """W* − W₀ from the objective itself, by least squares on the stacked system:
    min_W Σᵢ ‖(W₀ + ΔWᵢ)·Xᵢ − W·Xᵢ‖² / nᵢ + λ‖W − W₀‖², λ = ridge · tr(Σᵢ XᵢXᵢᵀ/nᵢ) / in."""
    width = base.shape[1]
    lam = ridge * sum(float((x @ x.T).trace()) / x.shape[1] for x in inputs) / width
    rows = [x.T / x.shape[1] ** 0.5 for x in inputs] + [lam ** 0.5 * torch.eye(width, dtype=torch.float64)]
    targets = [((base + d) @ x).T / x.shape[1] ** 0.5 for d, x in zip(deltas, inputs)] + [lam ** 0.5 * base.T]
    solution = torch.linalg.lstsq(torch.cat(rows), torch.cat(targets)).solution  # Wᵀ
    return solution.T - base


def test_the_closed_form_is_the_least_squares_solution_of_the_objective():
    generator = torch.Generator().manual_seed(0)
    out, width = 6, 10
    base = torch.randn(out, width, generator=generator, dtype=torch.float64)
    deltas = [torch.randn(out, width, generator=generator, dtype=torch.float64) * 0.1 for _ in range(3)]
    inputs = [torch.randn(width, n, generator=generator, dtype=torch.float64) for n in (7, 20, 4)]
    grams = [x @ x.T / x.shape[1] for x in inputs]
    for ridge in (1e-3, 0.5):
        expected = reference_fusion(base, deltas, inputs, ridge)
        assert torch.allclose(fused_delta(deltas, grams, ridge).double(), expected, atol=1e-5), ridge


def test_loras_reading_disjoint_inputs_each_keep_their_effect_where_the_sum_adds_crosstalk():
    """Two LoRAs whose prompts reach orthogonal input subspaces: fused, each acts on its own inputs as it did
    alone and the other's change does not leak in; the exact sum gives LoRA 2's change to LoRA 1's inputs."""
    generator = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(12, 12, generator=generator))[0]
    inputs = [basis[:, :5] @ torch.randn(5, 40, generator=generator),
              basis[:, 5:] @ torch.randn(7, 40, generator=generator)]
    deltas = [torch.randn(8, 12, generator=generator) for _ in range(2)]
    fused = fused_delta(deltas, [x @ x.T / 40 for x in inputs], ridge=1e-6)
    for delta, x in zip(deltas, inputs):
        assert torch.allclose(fused @ x, delta @ x, atol=1e-3)
    crosstalk = (deltas[1] @ inputs[0]).norm() / (deltas[0] @ inputs[0]).norm()
    assert crosstalk > 0.5  # the exact sum's error on LoRA 1's inputs, relative to its own change


def lora(out: int, width: int, seed: int, conv: bool = False) -> LoraModule:
    generator = torch.Generator().manual_seed(seed)
    tail = (3, 3) if conv else ()
    return LoraModule(torch.randn(2, width, *tail, generator=generator),
                      torch.randn(out, 2, *((1, 1) if conv else ()), generator=generator), 2.0)


def test_compose_fusion_solves_linear_loras_and_sums_the_rest_exactly():
    a = LoraAdapter({"unet.x.to_q": lora(4, 6, 0), "unet.x.conv": lora(4, 3, 1, conv=True)})
    b = LoraAdapter({"unet.x.to_q": lora(4, 6, 2), "unet.x.to_k": lora(5, 6, 3)})
    weighted = [(a, 0.5), (b, 1.0)]
    assert fusable_keys(weighted) == ["unet.x.to_q", "unet.x.to_k"]
    generator = torch.Generator().manual_seed(4)
    grams = []
    for _ in range(2):
        x = torch.randn(6, 30, generator=generator, dtype=torch.float64)
        grams.append({"unet.x.to_q": x @ x.T / 30, "unet.x.to_k": x @ x.T / 30})
    fused, report = compose_fusion(weighted, grams)
    assert report is None
    expected_q = fused_delta([0.5 * a.modules["unet.x.to_q"].delta(), b.modules["unet.x.to_q"].delta()],
                             [g["unet.x.to_q"] for g in grams])
    assert torch.allclose(fused.modules["unet.x.to_q"].delta(), expected_q)
    # to_k: only b changes it, and a's inputs ask it to stay: fused, it is not b's ΔW
    assert not torch.allclose(fused.modules["unet.x.to_k"].delta(), b.modules["unet.x.to_k"].delta(), atol=1e-3)
    assert torch.equal(fused.modules["unet.x.conv"].delta(), 0.5 * a.modules["unet.x.conv"].delta())
    low, report = compose_fusion(weighted, grams, rank=1)
    assert {m.rank for m in low.modules.values()} == {1} and len(low.modules) == 3
    assert 0 < report.overall_error < 1


def test_input_grams_sum_every_input_vector_of_every_call():
    layer = torch.nn.Linear(3, 2)
    calls = [torch.randn(2, 5, 3), torch.randn(4, 3)]
    grams = input_grams({"k": layer}, lambda: [layer(x) for x in calls])
    vectors = torch.cat([x.reshape(-1, 3) for x in calls]).double()
    assert torch.allclose(grams["k"], vectors.T @ vectors / len(vectors))
    layer(torch.randn(1, 3))  # the hooks are gone
    assert not layer._forward_pre_hooks


@pytest.fixture(scope="module")
def pair(toy_loras):
    return toy_loras(["mst", "lip"], metadata={"mst": {"loramix_trigger_words": "mustache"}})


def test_compose_fusion_writes_a_file_and_renders_it(pair, tmp_path):
    output = tmp_path / "fused.safetensors"
    result = CliRunner().invoke(main, [
        "compose", f"{pair['mst']}:1", f"{pair['lip']}:0.5", "--method", "fusion", "-o", str(output),
        "--lora-prompt", "lip=a face with lipstick", "--lora-prompt", "lip=lipstick", "--steps", "2",
        "--prompt", "a face", "-n", "2", "--images", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    with safe_open(str(output), framework="pt") as f:
        assert f.metadata()["loramix_compose_method"] == "fusion"
        assert f.metadata()["loramix_composed_from"] == f"{pair['mst']}:1 {pair['lip']}:0.5"
    assert "truncation error" in result.output  # written at the sum of the ranks by default
    assert len(list((tmp_path / "images").glob("*.png"))) == 3  # two images and the grid


@pytest.mark.slow  # records both LoRAs' layer inputs and learns ZipLoRA's merger coefficients (about 3.5 s)
def test_compose_ziplora_writes_a_low_rank_file_and_renders_it(pair, tmp_path):
    from loramix.formats.read import read_adapter

    output = tmp_path / "zipped.safetensors"
    result = CliRunner().invoke(main, [
        "compose", f"{pair['mst']}:1", f"{pair['lip']}:0.5", "--method", "ziplora", "-o", str(output),
        "--lora-prompt", "lip=a face with lipstick", "--steps", "2", "--prompt", "a face", "-n", "1",
        "--images", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    with safe_open(str(output), framework="pt") as f:
        assert f.metadata()["loramix_compose_method"] == "ziplora"
    assert "truncation error" not in result.output  # the columns' sum is rank Σ rᵢ exactly: no SVD
    assert set(read_adapter(output).ranks) == {8}
    assert len(list((tmp_path / "images").glob("*.png"))) == 2  # the image and the grid


@pytest.mark.parametrize("arguments, message", [
    (["--method", "fusion"], "--method fusion writes a file: give -o FILE"),
    (["--method", "ziplora"], "--method ziplora writes a file: give -o FILE"),
    (["--method", "fusion", "-o", "OUT"], "fusion and ziplora record each LoRA's layer inputs from prompts that "
                                          "call it up, and this file names no trigger words: give --lora-prompt "
                                          "lip=PROMPT"),
    (["-o", "OUT", "--lora-prompt", "lip=lipstick"], "--lora-prompt: --method exact does not use per-LoRA prompts"),
    (["--method", "fusion", "-o", "OUT", "--lora-prompt", "lipstick"], "--lora-prompt 'lipstick': write NAME=PROMPT"),
    (["--method", "fusion", "-o", "OUT", "--lora-prompt", "lips=x"],
     "--lora-prompt lips: no LoRA being composed is named lips"),
])
def test_fusion_without_what_it_needs_is_one_line(pair, tmp_path, arguments, message):
    arguments = [str(tmp_path / "out.safetensors") if a == "OUT" else a for a in arguments]
    result = CliRunner().invoke(main, ["compose", pair["mst"], pair["lip"], *arguments])
    assert_clean_error(result, message)
    assert not (tmp_path / "out.safetensors").exists()
