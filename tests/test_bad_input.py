"""Every bad input gets a one-line error naming the file and the problem, exit 1, no traceback, no output."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from loramix.cli import main
from loramix.errors import first_line
from loramix.formats.write import write_adapter
from loramix.testing import assert_clean_error, random_adapter

SAMPLES = Path(__file__).parent.parent / "samples"
GOOD = str(SAMPLES / "random-b.diffusers.safetensors")


def run(*args: str):
    return CliRunner().invoke(main, list(args))




def compose_fails(tmp_path, *inputs: str, fragments: tuple[str, ...]) -> None:
    out = tmp_path / "out.safetensors"
    assert_clean_error(run("compose", *inputs, "-o", str(out)), *fragments)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temp file left
    assert_clean_error(run("inspect", *[i.rsplit(":", 1)[0] for i in inputs]), *fragments[:1])


def test_missing_file(tmp_path):
    compose_fails(tmp_path, str(tmp_path / "nope.safetensors"), fragments=("nope.safetensors", "no such file"))


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 200, -100, -1])
def test_truncated_file(tmp_path, keep):
    data = Path(GOOD).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    compose_fails(tmp_path, str(bad), fragments=("cut.safetensors",))


def test_corrupt_header(tmp_path):
    data = bytearray(Path(GOOD).read_bytes())
    data[8:20] = b"not json!!!!"
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    compose_fails(tmp_path, str(bad), fragments=("corrupt.safetensors", "corrupt header"))


def test_enormous_declared_header(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    compose_fails(tmp_path, str(bad), fragments=("huge.safetensors", "header"))


def test_full_model_is_not_a_lora(tmp_path, unet):
    bad = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in list(unet.state_dict().items())[:20]},
              str(bad))
    compose_fails(tmp_path, str(bad), fragments=("model.safetensors", "full model checkpoint"))


def test_unknown_keys_are_listed_not_dropped(tmp_path, unet_attention_shapes):
    bad = tmp_path / "extra.safetensors"
    write_adapter(random_adapter(unet_attention_shapes, 2, 2, seed=0), bad)
    from safetensors import safe_open

    with safe_open(str(bad), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["unet.conv_in.lora_magic.weight"] = torch.zeros(2)
    tensors["unet.some_norm.weight"] = torch.zeros(2)
    save_file(tensors, str(bad))
    compose_fails(tmp_path, str(bad), fragments=("extra.safetensors", "2 keys", "unet.conv_in.lora_magic.weight"))


@pytest.mark.parametrize("key, name", [("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lokr_w1", "LoKr"),
                                       ("lora_unet_x.dora_scale", "DoRA")])
def test_lycoris_types_are_named(tmp_path, key, name):
    bad = tmp_path / "lyco.safetensors"
    save_file({key: torch.zeros(2, 2), "lora_unet_x.alpha": torch.tensor(1.0)}, str(bad))
    compose_fails(tmp_path, str(bad), fragments=("lyco.safetensors", name))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused_by_name(tmp_path, suffix):
    """By suffix alone; that a pickle which would run code never does is test_no_code_from_files' live check."""
    bad = tmp_path / f"model{suffix}"
    torch.save({"x": torch.zeros(1)}, bad)
    compose_fails(tmp_path, str(bad), fragments=(bad.name, "never unpickles"))


def test_pickle_content_behind_a_safetensors_name_is_refused(tmp_path):
    bad = tmp_path / "sneaky.safetensors"
    torch.save({"x": torch.zeros(1)}, bad)
    compose_fails(tmp_path, str(bad), fragments=("sneaky.safetensors", "pickle"))


def test_integer_tensors_are_refused(tmp_path):
    bad = tmp_path / "ints.safetensors"
    save_file({"unet.a.lora_A.weight": torch.zeros(2, 4, dtype=torch.int32),
               "unet.a.lora_B.weight": torch.zeros(4, 2, dtype=torch.int32)}, str(bad))
    compose_fails(tmp_path, str(bad), fragments=("ints.safetensors", "I32"))


def test_missing_factor_is_named(tmp_path):
    bad = tmp_path / "half.safetensors"
    save_file({"unet.a.b.lora_A.weight": torch.zeros(2, 4)}, str(bad))
    compose_fails(tmp_path, str(bad), fragments=("half.safetensors", "unet.a.b", "no up (B) factor"))


def test_shape_disagreement_names_the_module(tmp_path):
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    write_adapter(random_adapter({"unet.mid_block.attentions.0.proj_in": (64, 64)}, 2, 2, seed=0), a)
    write_adapter(random_adapter({"unet.mid_block.attentions.0.proj_in": (64, 32)}, 2, 2, seed=0), b)
    out = tmp_path / "out.safetensors"
    assert_clean_error(run("compose", str(a), str(b), "-o", str(out)), "unet.mid_block.attentions.0.proj_in")
    assert not out.exists()


@pytest.mark.parametrize("spec, fragment", [(f"{GOOD}:abc", "'abc' is not a number"),
                                            (f"{GOOD}:", "nothing after ':'"), (":0.5", "no file before ':'"),
                                            (f"{GOOD}:nan", "finite")])
def test_bad_weight_spec(tmp_path, spec, fragment):
    out = tmp_path / "out.safetensors"
    assert_clean_error(run("compose", spec, "-o", str(out)), "weight spec", fragment)
    assert not out.exists()


def test_output_folder_missing(tmp_path):
    out = tmp_path / "no" / "such" / "out.safetensors"
    assert_clean_error(run("compose", GOOD, "-o", str(out)), "out.safetensors", "does not exist")


def test_unwritable_output_folder():
    # /proc takes no new files, not even from root (CI may run as root, who writes through chmod 0500).
    assert_clean_error(run("compose", GOOD, "-o", "/proc/loramix-out.safetensors"),
                       "loramix-out.safetensors", "cannot write")


def test_output_path_is_a_folder(tmp_path):
    assert_clean_error(run("compose", GOOD, "-o", str(tmp_path)), "is a directory")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old content")

    def broken_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("loramix.formats.write.save_file", broken_save)
    result = run("compose", GOOD, "-o", str(out))
    assert result.exit_code == 130
    assert out.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_a_base_folder_with_a_plain_pickled_component_is_refused_by_name(tmp_path):
    """Even a harmless state dict saved as `.bin` is refused before anything loads it: loramix never unpickles."""
    import shutil

    from loramix.models.load import bundled_base_path

    folder = tmp_path / "base"
    shutil.copytree(bundled_base_path(), folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": torch.zeros(1)}, folder / "unet" / "diffusion_pytorch_model.bin")
    result = CliRunner().invoke(main, ["generate", "--prompt", "a face", "-n", "1", "--base", str(folder),
                                       "-o", str(tmp_path / "out")])
    assert_clean_error(result, "unet/diffusion_pytorch_model.bin is a pickle file", "never unpickles")
    assert not (tmp_path / "out").exists()


def test_loramix_debug_shows_every_traceback_behind_a_one_line_error(tmp_path, monkeypatch):
    """The library keeps its errors to one line (`from None`); LORAMIX_DEBUG=1 brings back what caused them."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 16) + b"{not json at all")
    plain = run("inspect", str(bad))
    assert_clean_error(plain, "corrupt header")
    monkeypatch.setenv("LORAMIX_DEBUG", "1")
    debug = run("inspect", str(bad))
    assert debug.exit_code == 1
    cause, error = debug.output.index("json.decoder.JSONDecodeError"), debug.output.index("AdapterFileError:")
    assert debug.output.count("Traceback (most recent call last)") == 2 and cause < error
    assert debug.output.rstrip().splitlines()[-1] == plain.output.strip()


@pytest.mark.parametrize("message, line", [("", "ValueError"), ("  \n", "ValueError"), ("first\nsecond", "first"),
                                           ("\nafter a blank line", "after a blank line")])
def test_first_line_of_any_message(message, line):
    assert first_line(ValueError(message)) == line
    assert len(first_line(ValueError("x" * 500))) == 200 and len(first_line(ValueError("x" * 500), None)) == 500
