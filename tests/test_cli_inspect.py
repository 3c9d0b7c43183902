"""`loramix inspect` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from loramix.cli import main

SAMPLES = Path(__file__).parent.parent / "samples"
KOHYA = str(SAMPLES / "random-a.kohya.safetensors")
DIFFUSERS = str(SAMPLES / "random-b.diffusers.safetensors")


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_json_describes_both_samples():
    reports = json.loads(run("inspect", KOHYA, DIFFUSERS, "--json"))
    kohya, diffusers = reports
    assert kohya["format"] == "kohya"
    assert kohya["components"] == ["unet", "text_encoder"]
    assert kohya["targets"]["unet"] == {"to_k": 32, "to_out.0": 32, "to_q": 32, "to_v": 32}
    assert kohya["targets"]["text_encoder"] == {"k_proj": 12, "out_proj": 12, "q_proj": 12, "v_proj": 12}
    assert (kohya["ranks"], kohya["alphas"], kohya["scales"]) == ([4], [2.0], [0.5])
    assert kohya["bytes_fp16"] == kohya["num_params"] * 2
    assert kohya["metadata"]["ss_network_dim"] == "4"
    assert diffusers["format"] == "diffusers"
    assert diffusers["components"] == ["unet"]
    assert diffusers["num_modules"] == 128
    assert diffusers["base_fit"] is None


def test_parameter_count_is_rank_times_in_plus_out():
    report = json.loads(run("inspect", DIFFUSERS, "--json"))[0]
    shapes = json.loads(run("inspect", DIFFUSERS, "--json", "--base", "sd15"))[0]
    # rank 2 over SD 1.5's 128 attention projections: r·(in + out) summed
    from loramix.models.shapes import load_base_shapes

    base = load_base_shapes("sd15").weight_shapes
    expected = sum(2 * (base[k][0] + base[k][1]) for k in base
                   if k.startswith("unet.") and k.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")))
    assert report["num_params"] == expected
    assert shapes["base_fit"]["missing_targets"] == []
    assert shapes["base_fit"]["shape_mismatches"] == []


def test_inspect_against_a_base_reports_the_fraction_and_missing_targets():
    fit = json.loads(run("inspect", KOHYA, "--json", "--base", "sdxl"))[0]["base_fit"]
    assert fit["base_params"] > 2_500_000_000
    # SD 1.5 attention does not fit SDXL: SDXL's first level has no attention, its text is 2048 wide
    assert len(fit["missing_targets"]) == 64
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in fit["missing_targets"]
    assert len(fit["shape_mismatches"]) == 34
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k: adapter (640, 768), base (640, 2048)" \
        in fit["shape_mismatches"]
    sd15 = json.loads(run("inspect", KOHYA, "--json", "--base", "sd15"))[0]["base_fit"]
    assert sd15["missing_targets"] == [] and sd15["shape_mismatches"] == []
    assert abs(sd15["fraction_of_base"] - 1_092_096 / sd15["base_params"]) < 1e-12


def test_inspect_text_output_is_readable():
    text = run("inspect", KOHYA, "--base", "sd15")
    assert text.splitlines()[0] == KOHYA
    assert "  format      kohya" in text
    assert "  unet        128 modules: to_k ×32, to_out.0 ×32, to_q ×32, to_v ×32" in text
    assert "  rank        4" in text
    assert "  alpha       2   (scale α/r: 0.5)" in text
    assert "  parameters  1,092,096" in text
    assert "2.2 MB in fp16, 4.4 MB in fp32" in text
    assert "the adapter is 0.111% of it" in text


def test_base_from_a_config_file_and_a_pipeline_folder(tmp_path):
    config = (Path(__file__).parent.parent / "loramix" / "architectures" / "sd1" / "unet" / "config.json").read_text()
    (tmp_path / "unet.json").write_text(config)
    fit = json.loads(run("inspect", DIFFUSERS, "--json", "--base", str(tmp_path / "unet.json")))[0]["base_fit"]
    assert fit["missing_targets"] == []
    pipeline = tmp_path / "pipe"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "unet" / "config.json").write_text(config)
    fit = json.loads(run("inspect", KOHYA, "--json", "--base", str(pipeline)))[0]["base_fit"]
    assert len(fit["missing_targets"]) == 48  # the pipeline has no text encoder


@pytest.mark.slow
def test_a_real_process_prints_no_library_notices():
    """bitsandbytes announces a missing optional CPU kernel as it is imported (on CPUs with AVX512-BF16, such
    as this project's); the command line keeps that out of its output."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "loramix", "inspect", KOHYA, "--base", "sd15"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kernels" not in result.stderr and "Failed to load" not in result.stderr, result.stderr
