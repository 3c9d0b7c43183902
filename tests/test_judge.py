"""The shipped judge reads the generator's faces and attributes, and fails broken ones; the judge command
reports what it sees."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loramix.cli import main
from loramix.errors import JudgeError
from loramix.toy.face_drawing import draw_face
from loramix.toy.face_spec import BACKGROUNDS, sample_face
from loramix.toy.faces import write_dataset
from loramix.toy.judge import (
    ATTRIBUTES,
    JudgeNet,
    JudgeTraining,
    evaluate_broken,
    evaluate_judge,
    labelled_images,
    load_judge,
    save_judge,
    train_judge,
)
from loramix.toy.judge_negatives import BREAKS, broken_face, non_face

BROKEN_REJECTED = 0.85  # the judge before broken faces were in its training rejected 22%
EACH_BREAK_REJECTED = 0.65


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@pytest.mark.slow
def test_shipped_judge_reads_fresh_generator_images(judge):
    accuracy = evaluate_judge(judge, count=200, seed=3)  # half faces with random attributes, half non-faces
    assert set(accuracy) == set(ATTRIBUTES)
    for attribute in ATTRIBUTES:
        assert accuracy[attribute] >= 0.95, accuracy


def test_a_face_with_a_mustache_only(judge):
    image = draw_face(sample_face(123456789, mustache=True))
    assert judge.verdicts([image]).tolist() == [[True, True, False, False]]


def test_the_same_face_without_attributes_and_with_all_three(judge):
    plain, everything = draw_face(sample_face(2024)), draw_face(sample_face(2024, True, True, True))
    assert judge.verdicts([plain, everything]).tolist() == [[True, False, False, False], [True, True, True, True]]


def test_blank_backgrounds_are_not_faces(judge):
    blanks = [Image.new("RGB", (64, 64), colour) for colour in [*BACKGROUNDS.values(), (255, 255, 255), (0, 0, 0)]]
    assert not judge.verdicts(blanks).any()


def test_a_face_in_shuffled_tiles_is_not_a_face(judge):
    face = draw_face(sample_face(77, mustache=True, glasses=True))
    scrambled = [non_face(seed, face) for seed in range(40)]  # backgrounds, shapes in face colours, shuffled tiles
    assert judge.verdicts(scrambled)[:, 0].float().mean() <= 0.05


def test_shipped_judge_fails_held_out_broken_faces_and_passes_clean_ones(judge):
    figures = evaluate_broken(judge, count=100, seed=7)  # faces no training saw, each broken every way
    assert figures["clean accepted"] >= 0.98, figures
    assert figures["broken rejected"] >= BROKEN_REJECTED, figures
    for kind in BREAKS:
        assert figures[kind] >= EACH_BREAK_REJECTED, (kind, figures)


def test_each_break_is_drawn_from_its_seed_and_changes_the_face():
    (face, other), _ = labelled_images([5, 6], non_face_share=0.0)
    for kind in BREAKS:
        broken = broken_face(face, other, 3, kind)
        assert torch.equal(broken, broken_face(face, other, 3, kind))
        assert broken.shape == face.shape and -1 <= broken.min() and broken.max() <= 1
        assert (broken - face).abs().mean() > 0.02, kind
    with pytest.raises(JudgeError, match="broken face kind 'melt': choose one of warp"):
        broken_face(face, other, 3, "melt")


def test_broken_faces_are_not_faces_with_unknown_attributes_and_leave_the_other_images_as_they_were():
    seeds = list(range(60))
    plain_images, plain_labels = labelled_images(seeds, non_face_share=0.3)
    images, labels = labelled_images(seeds, non_face_share=0.3, broken_share=0.3)
    broken = labels[:, 1].isnan()
    assert 8 <= int(broken.sum()) <= 30
    assert (labels[broken, 0] == 0).all() and labels[broken, 1:].isnan().all()
    assert (plain_labels[broken, 0] == 1).all()  # they are taken from the faces, never from the non-faces
    assert torch.equal(labels[~broken], plain_labels[~broken]) and torch.equal(images[~broken], plain_images[~broken])
    assert ((images[broken] - plain_images[broken]).abs().mean(dim=(1, 2, 3)) > 0.02).all()
    with pytest.raises(JudgeError, match="add up to more than 1"):
        labelled_images(seeds, non_face_share=0.6, broken_share=0.5)


def test_images_of_other_sizes_and_tensors_get_the_same_verdicts(judge):
    images = [draw_face(sample_face(seed, mustache=seed % 2 == 0, lipstick=seed % 3 == 0)) for seed in range(6)]
    large = [draw_face(sample_face(seed, mustache=seed % 2 == 0, lipstick=seed % 3 == 0), size=128)
             for seed in range(6)]
    assert torch.equal(judge.verdicts(images), judge.verdicts(large))
    assert judge.scores(torch.zeros(0, 3, 64, 64)).shape == (0, 4)
    with pytest.raises(JudgeError, match=r"expected a \(N, 3, H, W\) tensor"):
        judge.scores(torch.zeros(3, 64, 64))


@pytest.mark.slow
def test_training_runs_end_to_end_with_a_vae_roundtrip_and_is_seeded(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).eval()

    def roundtrip(images: torch.Tensor) -> torch.Tensor:
        return vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)

    config = JudgeTraining(examples=24, roundtrip_examples=12, broken_share=0.5)  # unknown labels in every batch
    first = train_judge(steps=3, batch_size=8, seed=1, roundtrip=roundtrip, config=config)
    again = train_judge(steps=3, batch_size=8, seed=1, roundtrip=roundtrip, config=config)
    assert isinstance(first, JudgeNet) and not first.training
    probe = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.isfinite(first(probe)).all()  # the unknown labels were left out of the loss, not trained as NaN
    assert torch.equal(first(probe), again(probe))

    save_judge(first, tmp_path / "judge.safetensors")  # fp16 on disk
    loaded = load_judge(tmp_path / "judge.safetensors")
    torch.testing.assert_close(loaded.net(probe), first(probe), atol=2e-2, rtol=0)


def test_load_judge_names_a_file_that_is_not_a_judge(tmp_path):
    bad = tmp_path / "judge.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(JudgeError, match="judge.safetensors: not a readable safetensors file"):
        load_judge(bad)
    with pytest.raises(JudgeError, match="no judge weights there"):
        load_judge(tmp_path / "missing.safetensors")


def test_judge_command_summarises_a_folder(tmp_path):
    write_dataset(tmp_path, 6, seed=0, glasses=True, masks=True)  # a training set: its masks are not images
    result = CliRunner().invoke(main, ["judge", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{tmp_path / '0000.png'}: face, glasses"
    assert lines[-1] == "6 images: face 100%, mustache 0%, lipstick 0%, glasses 100%"

    result = CliRunner().invoke(main, ["judge", str(tmp_path / "0001.png"), str(tmp_path / "0002.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["image"] for row in report["images"]] == [str(tmp_path / "0001.png"), str(tmp_path / "0002.png")]
    assert report["images"][0]["verdicts"] == {"face": True, "mustache": False, "lipstick": False, "glasses": True}
    assert report["summary"] == {"face": 1.0, "mustache": 0.0, "lipstick": 0.0, "glasses": 1.0}


def test_judge_command_names_a_corrupt_image(tmp_path):
    write_dataset(tmp_path, 2, seed=0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = CliRunner().invoke(main, ["judge", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}: not a readable image")
    assert result.output.count("\n") == 1


def test_judge_command_needs_images(tmp_path):
    result = CliRunner().invoke(main, ["judge", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"Error: no .png or .jpg images in {tmp_path}\n"
