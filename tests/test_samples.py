"""What ships in samples/ is what its commands make."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from loramix.cli import main

SAMPLES = Path(__file__).parent.parent / "samples"


@pytest.mark.parametrize("attribute, seed, count", [("mustache", 101, 72), ("lipstick", 102, 36), ("glasses", 103, 36)])
def test_sample_datasets_are_what_loramix_faces_writes(attribute, seed, count, tmp_path):
    result = CliRunner().invoke(main, ["faces", str(tmp_path), f"--{attribute}", "--masks", "--count", str(count),
                                       "--seed", str(seed)])
    assert result.exit_code == 0, result.output
    shipped = sorted(p.name for p in (SAMPLES / attribute).iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    assert len(shipped) == 3 * count  # image, caption and mask for each face
    for name in shipped:
        assert (SAMPLES / attribute / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert all(attribute in (tmp_path / f"{i:04d}.txt").read_text() for i in range(count))


@pytest.mark.parametrize("attribute", ["mustache", "lipstick", "glasses"])
def test_sample_regions_are_where_the_generator_draws_each_attribute(attribute):
    import numpy as np
    from PIL import Image

    from loramix.toy.face_drawing import attribute_box
    from loramix.toy.face_spec import sample_face
    from loramix.toy.faces import attribute_region

    shipped = np.asarray(Image.open(SAMPLES / "regions" / f"{attribute}.png"))
    assert np.array_equal(shipped, np.asarray(attribute_region(attribute)))
    for seed in range(2000, 2050):  # faces the region was not made from fall inside it too
        left, top, right, bottom = attribute_box(sample_face(seed, **{attribute: True}), attribute)
        assert shipped[top:bottom, left:right].min() == 255
    assert 0.05 < (shipped > 0).mean() < 0.3  # a part of the face, not all of it
