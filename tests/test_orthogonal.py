"""Orthogonal adaptation (Po et al. 2023): the shared basis, training in a slot, and sums that refuse a slot taken
twice. The reference for "does not interfere" is the paper's condition itself: Aₛ·Aₜᵀ = 0, so a LoRA adds nothing
on the directions another slot reads."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from loramix.cli import main
from loramix.errors import LoramixError
from loramix.formats.metadata import META_ORTHOGONAL_SLOT
from loramix.formats.read import read_adapter, read_weighted
from loramix.lora.orthogonal import check_distinct_slots, name_slot, orthogonal_basis, slot_count, slot_down
from loramix.lora.specs import WeightedFile
from loramix.testing import assert_clean_error, write_toy_lora
from loramix.train.loop import train
from loramix.train.recipe import make_recipe


def test_the_basis_is_orthogonal_the_same_every_time_and_slots_are_disjoint():
    basis = orthogonal_basis(64)
    assert torch.allclose(basis.T @ basis, torch.eye(64, dtype=torch.float64), atol=1e-12)
    assert torch.equal(basis, orthogonal_basis(64))  # every LoRA, by anyone, draws the same one
    assert not torch.allclose(orthogonal_basis(64)[:32, :32], orthogonal_basis(32))  # a basis per size
    a, b = slot_down(64, 8, 0), slot_down(64, 8, 3)
    assert a.shape == (8, 64)
    assert torch.allclose(a @ a.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(a @ b.T, torch.zeros(8, 8, dtype=torch.float64), atol=1e-12)
    assert slot_count(64, 8) == 8
    with pytest.raises(LoramixError, match="orthogonal_slot 8: a layer with 64 input features holds 8 slots"):
        slot_down(64, 8, 8)


def test_loras_in_different_slots_add_nothing_on_each_others_directions():
    """ΔWₛ·x = 0 for x in the span slot t reads; and the sum acts on slot t's inputs exactly as t alone."""
    generator = torch.Generator().manual_seed(0)
    a_s, a_t = slot_down(32, 4, 1), slot_down(32, 4, 5)
    delta_s = torch.randn(16, 4, generator=generator, dtype=torch.float64) @ a_s
    delta_t = torch.randn(16, 4, generator=generator, dtype=torch.float64) @ a_t
    x = a_t.T @ torch.randn(4, 10, generator=generator, dtype=torch.float64)
    assert torch.allclose(delta_s @ x, torch.zeros(16, 10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((delta_s + delta_t) @ x, delta_t @ x, atol=1e-12)


def test_a_slot_taken_twice_in_a_sum_is_refused_naming_both_files():
    check_distinct_slots([("a.safetensors", 0), ("b.safetensors", 1), ("c.safetensors", None), ("d", None)])
    check_distinct_slots([("a.safetensors", 0), ("a.safetensors", 0)])  # one file twice is one LoRA
    with pytest.raises(LoramixError, match=r"^b.safetensors: trained in orthogonal slot 1, which a.safetensors "
                                           r"in the same sum already takes"):
        check_distinct_slots([("a.safetensors", 1), ("b.safetensors", 1)])


def test_training_in_a_slot_keeps_a_fixed_trains_b_and_records_the_slot(mustache_faces, tmp_path):
    recipe = make_recipe(None, dict(dataset=str(mustache_faces), trigger="mustache", caption_template="{caption}",
                                    steps=3, batch_size=2, learning_rate=1e-2, rank=4, orthogonal_slot=2,
                                    output=str(tmp_path / "run"), name="m", final_samples=False))
    result = train(recipe)
    adapter = read_adapter(result.adapter)
    assert adapter.metadata[META_ORTHOGONAL_SLOT] == "2"
    for module in adapter.modules.values():
        size = module.down.shape[1]
        assert torch.allclose(module.down, slot_down(size, 4, 2).float(), atol=1e-6)  # A never moved
        assert module.up.abs().max() > 0  # B did (it starts at zero)


def test_a_slot_from_the_name_is_the_same_everywhere_and_spreads_over_the_slots():
    assert name_slot("mustache", 40) == name_slot("mustache", 40)
    taken = [name_slot(f"lora-{i}", 8) for i in range(400)]
    assert set(taken) == set(range(8))  # every slot is reached, none beyond
    assert max(taken.count(slot) for slot in range(8)) < 2 * 400 / 8  # and none takes most names


def test_training_with_the_slot_from_its_name_takes_and_records_that_slot(mustache_faces, tmp_path):
    recipe = make_recipe(None, dict(dataset=str(mustache_faces), trigger="mustache", caption_template="{caption}",
                                    steps=1, batch_size=2, rank=4, orthogonal_slot_from_name=True,
                                    output=str(tmp_path / "run"), name="my-mustache", final_samples=False))
    adapter = read_adapter(train(recipe).adapter)
    slots = min(module.down.shape[1] // 4 for module in adapter.modules.values())  # the smallest layer's room
    slot = name_slot("my-mustache", slots)
    assert adapter.metadata[META_ORTHOGONAL_SLOT] == str(slot)
    for module in adapter.modules.values():
        assert torch.allclose(module.down, slot_down(module.down.shape[1], 4, slot).float(), atol=1e-6)


def test_a_slot_the_layers_have_no_room_for_is_one_line(mustache_faces, tmp_path):
    result = CliRunner().invoke(main, ["train", "--dataset", str(mustache_faces), "--steps", "1", "--rank", "4",
                                       "--orthogonal-slot", "1000", "--output", str(tmp_path / "r")])
    assert_clean_error(result, "orthogonal_slot 1000: the UNet's", "features, room for")
    result = CliRunner().invoke(main, ["train", "--dataset", str(mustache_faces), "--steps", "1",
                                       "--orthogonal-slot", "-1", "--output", str(tmp_path / "r")])
    assert_clean_error(result, "orthogonal_slot: must be 0 or more")
    result = CliRunner().invoke(main, ["train", "--dataset", str(mustache_faces), "--steps", "1", "--orthogonal-slot",
                                       "1", "--orthogonal-slot-from-name", "--output", str(tmp_path / "r")])
    assert_clean_error(result, "orthogonal_slot 1 and orthogonal_slot_from_name: give a slot number or take one")


def test_compose_and_generate_refuse_two_loras_of_one_slot(tmp_path):
    a = write_toy_lora(tmp_path / "a.safetensors", seed=1, metadata={META_ORTHOGONAL_SLOT: "0"})
    b = write_toy_lora(tmp_path / "b.safetensors", seed=2, metadata={META_ORTHOGONAL_SLOT: "0"})
    c = write_toy_lora(tmp_path / "c.safetensors", seed=3, metadata={META_ORTHOGONAL_SLOT: "1"})
    assert len(read_weighted([WeightedFile(str(a), 1.0), WeightedFile(str(c), 1.0)])) == 2
    result = CliRunner().invoke(main, ["compose", f"{a}:1", f"{b}:1", "-o", str(tmp_path / "ab.safetensors")])
    assert_clean_error(result, f"{b}: trained in orthogonal slot 0, which {a} in the same sum already takes")
    assert not (tmp_path / "ab.safetensors").exists()
    result = CliRunner().invoke(main, ["generate", "--prompt", "a face", "-n", "1", "--steps", "1", "--lora",
                                       str(a), "--lora", str(b), "-o", str(tmp_path / "out")])
    assert_clean_error(result, "trained in orthogonal slot 0")
