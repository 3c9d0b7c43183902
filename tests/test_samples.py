"""What ships in samples/ is what its commands make."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from loramix.cli import main

SAMPLES = Path(__file__).parent.parent / "samples"


@pytest.mark.parametrize("attribute, seed", [("mustache", 101), ("lipstick", 102), ("glasses", 103)])
def test_sample_datasets_are_what_loramix_faces_writes(attribute, seed, tmp_path):
    result = CliRunner().invoke(main, ["faces", str(tmp_path), f"--{attribute}", "--masks", "--count", "36",
                                       "--seed", str(seed)])
    assert result.exit_code == 0, result.output
    shipped = sorted(p.name for p in (SAMPLES / attribute).iterdir())
    assert shipped == sorted(p.name for p in tmp_path.iterdir())
    assert len(shipped) == 108  # image, caption and mask for each of 36 faces
    for name in shipped:
        assert (SAMPLES / attribute / name).read_bytes() == (tmp_path / name).read_bytes(), name
    assert all(attribute in (tmp_path / f"{i:04d}.txt").read_text() for i in range(36))
