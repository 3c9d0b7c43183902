"""ZipLoRA's learned merger coefficients, layer by layer: the loss against a reference written from the
paper's objective on explicit inputs, what the learning does to it, and the merged modules."""

from __future__ import annotations

import torch

from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.ziplora import compose_ziplora, learn_mergers, merger_loss


def reference_loss(ups, downs, mergers, inputs, similarity_weight) -> torch.Tensor:
    """Σᵢ ‖ΔW_m·Xᵢ − ΔWᵢ·Xᵢ‖²/nᵢ over Σᵢ ‖ΔWᵢ·Xᵢ‖²/nᵢ, plus λ·Σ_{i<j} |cos(mᵢ, mⱼ)|, with every ΔW formed
    whole: ΔWᵢ = Bᵢ·Aᵢ and ΔW_m = Σᵢ ΔWᵢ·diag(mᵢ)."""
    deltas = [u @ d for u, d in zip(ups, downs)]
    merged = sum(delta @ torch.diag(m) for delta, m in zip(deltas, mergers))
    error = sum(((merged - delta) @ x).square().sum() / x.shape[1] for delta, x in zip(deltas, inputs))
    own = sum((delta @ x).square().sum() / x.shape[1] for delta, x in zip(deltas, inputs))
    cosines = [(mergers[i] @ mergers[j]) / (mergers[i].norm() * mergers[j].norm())
               for i in range(len(mergers)) for j in range(i + 1, len(mergers))]
    return error / own + similarity_weight * sum(c.abs() for c in cosines)


def factors(out: int, width: int, ranks, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ups = [torch.randn(out, r, generator=generator, dtype=torch.float64) for r in ranks]
    downs = [torch.randn(r, width, generator=generator, dtype=torch.float64) for r in ranks]
    return ups, downs, generator


def test_the_loss_from_gram_matrices_is_the_objective_on_the_inputs():
    ups, downs, generator = factors(5, 9, (2, 3, 1), seed=0)
    inputs = [torch.randn(9, n, generator=generator, dtype=torch.float64) for n in (4, 30, 11)]
    mergers = [torch.rand(9, generator=generator, dtype=torch.float64) * 2 - 0.5 for _ in range(3)]
    grams = [x @ x.T / x.shape[1] for x in inputs]
    for weight in (0.0, 0.3):
        expected = reference_loss(ups, downs, mergers, inputs, weight)
        assert torch.allclose(merger_loss(ups, downs, mergers, grams, weight), expected, rtol=1e-10), weight


def test_learning_lowers_the_loss_of_the_exact_sum_and_one_lora_alone_stays_as_it_is():
    ups, downs, generator = factors(6, 10, (2, 2), seed=1)
    grams = [(x := torch.randn(10, 25, generator=generator, dtype=torch.float64)) @ x.T / 25 for _ in range(2)]
    ones = [torch.ones(10, dtype=torch.float64)] * 2
    start = merger_loss(ups, downs, ones, grams)
    learned = learn_mergers(ups, downs, grams)
    assert merger_loss(ups, downs, learned, grams) < 0.8 * start
    assert not torch.equal(learned[0], learned[1])
    alone = learn_mergers(ups[:1], downs[:1], grams[:1])  # nothing to keep apart: m = 1 is already exact
    assert merger_loss(ups[:1], downs[:1], alone, grams[:1]) < 1e-8
    assert torch.allclose(alone[0], torch.ones(10, dtype=torch.float64), atol=1e-3)  # Adam's steps on rounding


def test_loras_on_disjoint_columns_keep_their_merge_exact():
    """Each LoRA reads its own input features and its prompts reach only those: the exact sum already does
    what each does alone, so learning keeps each LoRA's columns as they were."""
    ups, downs, generator = factors(6, 8, (2, 2), seed=2)
    downs[0][:, 4:] = 0
    downs[1][:, :4] = 0
    inputs = [torch.randn(8, 40, generator=generator, dtype=torch.float64) for _ in range(2)]
    inputs[0][4:] = 0
    inputs[1][:4] = 0
    grams = [x @ x.T / 40 for x in inputs]
    learned = learn_mergers(ups, downs, grams, similarity_weight=0.0)
    assert merger_loss(ups, downs, learned, grams, similarity_weight=0.0) < 1e-8
    for merger, columns in zip(learned, (slice(0, 4), slice(4, 8))):
        assert torch.allclose(merger[columns], torch.ones(4, dtype=torch.float64), atol=1e-3)


def test_the_merged_module_is_the_columns_scaled_sum_at_rank_the_sum_of_ranks():
    generator = torch.Generator().manual_seed(3)

    def module(out, width, rank, conv=False):
        tail = (3, 3) if conv else ()
        return LoraModule(torch.randn(rank, width, *tail, generator=generator),
                          torch.randn(out, rank, *((1, 1) if conv else ()), generator=generator), 4.0)

    a = LoraAdapter({"unet.x.to_q": module(8, 6, 2)})
    b = LoraAdapter({"unet.x.to_q": module(8, 6, 3), "unet.x.to_k": module(5, 6, 2)})
    grams = []
    for _ in range(2):
        x = torch.randn(6, 30, generator=generator, dtype=torch.float64)
        grams.append({"unet.x.to_q": x @ x.T / 30, "unet.x.to_k": x @ x.T / 30})
    merged, report = compose_ziplora([(a, 0.5), (b, 1.0)], grams)
    assert report is None and merged.modules["unet.x.to_q"].rank == 5
    ups = [0.5 * a.modules["unet.x.to_q"].scale * a.modules["unet.x.to_q"].up,
           b.modules["unet.x.to_q"].scale * b.modules["unet.x.to_q"].up]
    downs = [a.modules["unet.x.to_q"].down, b.modules["unet.x.to_q"].down]
    mergers = learn_mergers(ups, downs, [g["unet.x.to_q"] for g in grams])
    expected = sum((u @ d).double() @ torch.diag(m) for u, d, m in zip(ups, downs, mergers))
    assert torch.allclose(merged.modules["unet.x.to_q"].delta().double(), expected, atol=1e-5)
    # with a conv, which keeps its exact weighted sum, the file is written at a rank: a truncated SVD
    a.modules["unet.x.conv"] = module(4, 3, 2, conv=True)
    merged, report = compose_ziplora([(a, 0.5), (b, 1.0)], grams)
    assert report is not None and merged.modules["unet.x.to_q"].rank == 5
    assert torch.allclose(merged.modules["unet.x.conv"].delta(), 0.5 * a.modules["unet.x.conv"].delta(), atol=1e-5)


def test_the_expanded_loss_it_learns_on_has_the_objectives_gradient():
    """learn_mergers expands the loss once per layer; Adam's first step moves each coefficient by the learning
    rate against the sign of its gradient, which must be merger_loss's at m = 1."""
    ups, downs, generator = factors(7, 9, (2, 3), seed=4)
    grams = [(x := torch.randn(9, 20, generator=generator, dtype=torch.float64)) @ x.T / 20 for _ in range(2)]
    ones = [torch.ones(9, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    merger_loss(ups, downs, ones, grams).backward()
    stepped = learn_mergers(ups, downs, grams, steps=1, learning_rate=0.01)
    for merger, start in zip(stepped, ones):
        assert torch.allclose(merger, 1 - 0.01 * start.grad.sign(), atol=1e-9)
