"""bench/heldout.py's phrasings are held out: every word is one token of the toy tokenizer (a split word is one
the base never saw, and would measure that instead), none is a caption the face generator writes, and none
repeats an earlier set's, so a new set measures phrasings nothing was tuned on."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import heldout  # noqa: E402

# The bare attribute words are phrasings of two early sets (HELD_OUT and FRESH), written before this check.
REPEATED_BEFORE_THE_CHECK = {"mustache", "lipstick", "glasses"}


def test_every_word_of_every_phrasing_is_one_token():
    from transformers import CLIPTokenizer

    from loramix.models.load import bundled_base_path

    tokenizer = CLIPTokenizer.from_pretrained(str(bundled_base_path() / "tokenizer"))
    assert heldout.check_vocabulary(tokenizer) == []


def test_no_phrasing_repeats_an_earlier_one():
    counts = Counter(heldout.every_phrasing())
    assert {phrasing for phrasing, n in counts.items() if n > 1} <= REPEATED_BEFORE_THE_CHECK


@pytest.mark.slow  # writes the captions of 60,000 generated faces: about 2 s
def test_no_phrasing_is_a_training_caption():
    assert heldout.check_not_training_captions() == []
