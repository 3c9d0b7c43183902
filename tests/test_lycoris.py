"""LyCORIS files (LoHa, LoKr, full, DoRA) read, composed and rendered exactly: each ΔW against a float64
reference written here from the published definitions, as A1111 and ComfyUI apply α."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from loramix.cli import main
from loramix.formats.read import read_adapter
from loramix.models.fuse import fuse_into
from loramix.testing import assert_clean_error

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # (32, 32) in the tiny UNet
CONV = "down_blocks.0.resnets.0.conv1"  # (32, 32, 3, 3)
OUT, IN, K = 32, 32, 3


def kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def g(seed: int):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g(seed), dtype=torch.float64) * 0.3


def tucker_reference(core, a, b):
    """W[p, r, k, l] = Σᵢ Σⱼ T[i, j, k, l]·a[i, p]·b[j, r], contracted one axis at a time."""
    partial = torch.tensordot(core, b, dims=([1], [0]))  # (i, k, l, r)
    return torch.tensordot(a, partial, dims=([0], [0])).permute(0, 3, 1, 2)  # (p, r, k, l)


def kron_reference(w1, w2):
    """kron(W1, W2): block (i, j) is W1[i, j]·W2."""
    c, d = w2.shape[:2]
    out = torch.zeros(w1.shape[0] * c, w1.shape[1] * d, *w2.shape[2:], dtype=torch.float64)
    for i in range(w1.shape[0]):
        for j in range(w1.shape[1]):
            out[i * c:(i + 1) * c, j * d:(j + 1) * d] = w1[i, j] * w2
    return out


def loha_linear(rank=4, alpha=2.0):
    t = {"hada_w1_a": rand(OUT, rank, seed=1), "hada_w1_b": rand(rank, IN, seed=2),
         "hada_w2_a": rand(OUT, rank, seed=3), "hada_w2_b": rand(rank, IN, seed=4)}
    ref = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * alpha / rank
    return t, alpha, ref


def loha_tucker(rank=3, alpha=1.5):
    t = {"hada_w1_a": rand(rank, OUT, seed=5), "hada_w1_b": rand(rank, IN, seed=6),
         "hada_t1": rand(rank, rank, K, K, seed=7), "hada_w2_a": rand(rank, OUT, seed=8),
         "hada_w2_b": rand(rank, IN, seed=9), "hada_t2": rand(rank, rank, K, K, seed=10)}
    ref = tucker_reference(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * \
        tucker_reference(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"]) * alpha / rank
    return t, alpha, ref


def lokr_linear(rank=2, alpha=4.0):
    """W1 whole (4 × 8), W2 factored (8 × r)(r × 4): α is divided by W2's rank."""
    t = {"lokr_w1": rand(4, 8, seed=11), "lokr_w2_a": rand(8, rank, seed=12), "lokr_w2_b": rand(rank, 4, seed=13)}
    ref = kron_reference(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * alpha / rank
    return t, alpha, ref


def lokr_conv_whole(alpha=3.0):
    """Both factors whole: no rank, so A1111 and ComfyUI ignore α (scale 1)."""
    t = {"lokr_w1": rand(4, 2, seed=14), "lokr_w2": rand(8, 16, K, K, seed=15)}
    return t, alpha, kron_reference(t["lokr_w1"], t["lokr_w2"])


def lokr_conv_tucker(rank=2, alpha=1.0):
    t = {"lokr_w1_a": rand(4, rank, seed=16), "lokr_w1_b": rand(rank, 2, seed=17),
         "lokr_w2_a": rand(rank, 8, seed=18), "lokr_w2_b": rand(rank, 16, seed=19),
         "lokr_t2": rand(rank, rank, K, K, seed=20)}
    w2 = tucker_reference(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    return t, alpha, kron_reference(t["lokr_w1_a"] @ t["lokr_w1_b"], w2) * alpha / rank


CASES = {"loha": (LINEAR, loha_linear), "loha-tucker": (CONV, loha_tucker), "lokr": (LINEAR, lokr_linear),
         "lokr-conv": (CONV, lokr_conv_whole), "lokr-tucker": (CONV, lokr_conv_tucker)}


def write(path, module_path, tensors, alpha=None, dtype=torch.float64):
    name = kohya(module_path)
    out = {f"{name}.{k}": v.to(dtype) for k, v in tensors.items()}
    if alpha is not None:
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    save_file(out, str(path))
    return str(path)


@pytest.mark.parametrize("case", CASES)
def test_each_type_reads_to_its_published_delta(case, tmp_path):
    module_path, make = CASES[case]
    tensors, alpha, ref = make()
    adapter = read_adapter(write(tmp_path / "x.safetensors", module_path, tensors, alpha))
    module = adapter.modules[f"unet.{module_path}"]
    assert module.kind == ("LoHa" if case.startswith("loha") else "LoKr")
    torch.testing.assert_close(module.delta(torch.float64).reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_full_difference_reads_as_itself_and_block_scales_exactly(tmp_path):
    diff = rand(OUT, IN, K, K, seed=21)
    adapter = read_adapter(write(tmp_path / "f.safetensors", CONV, {"diff": diff}))
    module = adapter.modules[f"unet.{CONV}"]
    assert module.kind == "full"
    assert torch.equal(module.delta(torch.float64), diff)
    assert torch.equal(module.scaled(0.25).delta(torch.float64), diff * 0.25)


@pytest.fixture()
def mixed_files(tmp_path):
    """A LoHa, a LoKr and a plain LoRA on the same linear layer, and a LoHa-Tucker on a conv."""
    t, a, loha_ref = loha_linear()
    loha = write(tmp_path / "loha.safetensors", LINEAR, t, a, dtype=torch.float32)
    t, a, lokr_ref = lokr_linear()
    lokr = write(tmp_path / "lokr.safetensors", LINEAR, t, a, dtype=torch.float32)
    down, up = rand(2, IN, seed=30), rand(OUT, 2, seed=31)
    lora = write(tmp_path / "lora.safetensors", LINEAR, {"lora_down.weight": down, "lora_up.weight": up}, 1.0,
                 dtype=torch.float32)
    lora_ref = up @ down * 0.5
    return {"loha": (loha, loha_ref), "lokr": (lokr, lokr_ref), "lora": (lora, lora_ref)}


def test_compose_full_diff_is_the_exact_sum(mixed_files, tmp_path):
    out = tmp_path / "sum.safetensors"
    weights = {"loha": 0.7, "lokr": -0.4, "lora": 1.2}
    result = CliRunner().invoke(main, ["compose", *(f"{mixed_files[n][0]}:{w}" for n, w in weights.items()),
                                       "--format", "full-diff", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 modules, whole differences, full-diff naming" in result.output
    module = read_adapter(out).modules[f"unet.{LINEAR}"]
    expected = sum(w * mixed_files[n][1] for n, w in weights.items())
    torch.testing.assert_close(module.delta(torch.float64), expected, rtol=1e-5, atol=1e-6)


def test_compose_as_a_lora_needs_the_svd_and_reports_its_error(mixed_files, tmp_path):
    out = tmp_path / "reduced.safetensors"
    loha = mixed_files["loha"][0]
    result = CliRunner().invoke(main, ["compose", f"{loha}:0.5", "-o", str(out)])
    assert_clean_error(result, loha, "LoHa, not two low-rank factors", "--format full-diff", "--rank R")
    assert not out.exists()
    result = CliRunner().invoke(main, ["compose", f"{loha}:0.5", "--rank", "32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "truncation error (relative Frobenius): " in result.output
    module = read_adapter(out).modules[f"unet.{LINEAR}"]
    # rank 32 of a 32 × 32 weight keeps everything: the SVD reproduces the LoHa's ΔW
    torch.testing.assert_close(module.delta(torch.float64), 0.5 * mixed_files["loha"][1], rtol=1e-4, atol=1e-5)


def test_fused_render_adds_the_lycoris_delta(mixed_files, unet):
    from loramix.lora.compose import compose_by_method

    weighted = [(read_adapter(mixed_files[n][0]), w) for n, w in (("loha", 0.7), ("lora", 0.3))]
    result, _ = compose_by_method(weighted, "exact", dense=True)
    model = copy.deepcopy(unet)
    before = dict(unet.named_modules())[LINEAR].weight.detach().double()
    fuse_into(model, result.of_component("unet"))
    after = dict(model.named_modules())[LINEAR].weight.detach().double()
    expected = 0.7 * mixed_files["loha"][1] + 0.3 * mixed_files["lora"][1]
    torch.testing.assert_close(after - before, expected, rtol=1e-4, atol=1e-5)


def test_inspect_names_each_module_type(mixed_files):
    result = CliRunner().invoke(main, ["inspect", mixed_files["loha"][0], mixed_files["lokr"][0]])
    assert result.exit_code == 0, result.output
    assert "types       LoHa ×1" in result.output and "types       LoKr ×1" in result.output


def dora_reference(weight, down, up, alpha, magnitude, strength):
    """DoRA (Liu et al. 2024): W' = m·V/‖V‖, V = W + (α/r)·B·A, ‖·‖ over each input column for m of shape
    (1, in); at strength s the weight moves s of the way: W + s·(W' − W)."""
    v = weight + (alpha / down.shape[0]) * up @ down
    column_norm = torch.sqrt((v ** 2).sum(dim=0, keepdim=True)) + torch.finfo(torch.float32).eps
    return weight + strength * (magnitude * v / column_norm - weight)


def dora_file(tmp_path, unet):
    down, up = rand(2, IN, seed=40), rand(OUT, 2, seed=41)
    weight = dict(unet.named_modules())[LINEAR].weight.detach().double()
    magnitude = torch.sqrt((weight ** 2).sum(dim=0, keepdim=True)) * 1.1
    path = write(tmp_path / "dora.safetensors", LINEAR, {"lora_down.weight": down, "lora_up.weight": up,
                                                        "dora_scale": magnitude}, 1.0, dtype=torch.float32)
    return path, weight, down, up, magnitude


def test_dora_renders_as_its_definition_and_refuses_to_sum(tmp_path, unet):
    path, weight, down, up, magnitude = dora_file(tmp_path, unet)
    module = read_adapter(path).modules[f"unet.{LINEAR}"]
    assert module.kind == "DoRA"
    applied = module.scaled(0.6).applied(weight.float()).double()
    torch.testing.assert_close(applied, dora_reference(weight, down, up, 1.0, magnitude, 0.6), rtol=1e-5, atol=1e-5)
    out = tmp_path / "x.safetensors"
    result = CliRunner().invoke(main, ["compose", path, "--format", "full-diff", "-o", str(out)])
    assert_clean_error(result, path, "is DoRA, which renormalises the weight it changes", "cannot be summed")
    assert not out.exists()


@pytest.mark.parametrize("tensors, fragment", [
    ({"hada_w1_a": rand(OUT, 2, seed=1), "hada_w1_b": rand(2, IN, seed=2), "hada_w2_a": rand(OUT, 2, seed=3)},
     "LoHa module unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q has no hada_w2_b"),
    ({"hada_w1_a": rand(2, OUT, seed=1), "hada_w1_b": rand(2, IN, seed=2), "hada_t1": rand(3, 2, K, K, seed=3),
      "hada_w2_a": rand(2, OUT, seed=4), "hada_w2_b": rand(2, IN, seed=5), "hada_t2": rand(2, 2, K, K, seed=6)},
     "Tucker core hada_t1 of shape (3, 2, 3, 3) does not fit its factors"),
    ({"lokr_w1": rand(4, 8, seed=1)}, "has neither lokr_w2 nor both lokr_w2_a and lokr_w2_b"),
    ({"lokr_w1": rand(4, 2, seed=1), "lokr_w2_a": rand(2, 8, seed=2), "lokr_w2_b": rand(2, 16, seed=3),
      "lokr_t2": rand(2, 3, K, K, seed=4)}, "Tucker core lokr_t2 of shape (2, 3, 3, 3) does not fit"),
])
def test_bad_lycoris_files_are_refused_naming_the_problem(tensors, fragment, tmp_path):
    path = write(tmp_path / "bad.safetensors", LINEAR, tensors, 1.0)
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(main, ["compose", path, "--format", "full-diff", "-o", str(out)])
    assert_clean_error(result, path, fragment)
    assert not out.exists()


def test_rendering_fuses_a_loha_and_a_dora_at_their_weights(pipeline, toy_attention_shapes, tmp_path):
    """What generate --lora and compose --prompt do: the LoHa's ΔW at its weight, then the DoRA on top."""
    from loramix.lora.specs import WeightedFile
    from loramix.models.loras import PipelineLoras

    key = next(iter(toy_attention_shapes))
    out_features, in_features = toy_attention_shapes[key]
    module_path = key.removeprefix("unet.")
    layer = dict(pipeline.unet.named_modules())[module_path]
    w0 = layer.weight.detach().double().clone()
    t = {"hada_w1_a": rand(out_features, 2, seed=1), "hada_w1_b": rand(2, in_features, seed=2),
         "hada_w2_a": rand(out_features, 2, seed=3), "hada_w2_b": rand(2, in_features, seed=4)}
    loha = write(tmp_path / "loha.safetensors", module_path, t, 2.0, dtype=torch.float32)
    down, up = rand(2, in_features, seed=5), rand(out_features, 2, seed=6)
    magnitude = torch.sqrt((w0 ** 2).sum(dim=0, keepdim=True)) * 0.9
    dora = write(tmp_path / "dora.safetensors", module_path, {"lora_down.weight": down, "lora_up.weight": up,
                                                              "dora_scale": magnitude}, 2.0, dtype=torch.float32)
    loras = PipelineLoras(pipeline)
    loras.apply([WeightedFile(loha, 0.5), WeightedFile(dora, 0.7)])
    loha_delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 2.0 / 2
    expected = dora_reference(w0 + 0.5 * loha_delta, down, up, 2.0, magnitude, 0.7)
    torch.testing.assert_close(layer.weight.detach().double(), expected, rtol=1e-4, atol=1e-5)
    loras.apply([])
    torch.testing.assert_close(layer.weight.detach().double(), w0, rtol=0, atol=0)
