"""Learned column-wise merger coefficients: ZipLoRA (Shah, Ruiz, Cole, Lu, Lazebnik, Li and Jampani 2023,
"ZipLoRA: Any Subject in Any Style by Effectively Merging LoRAs", arXiv 2311.13600, §3.3), layer by layer.

ZipLoRA merges LoRAs i = 1…K, with updates ΔWᵢ (out × in, each already times its weight wᵢ), into

    ΔW_m = Σᵢ ΔWᵢ·diag(mᵢ)

where the merger vector mᵢ ∈ Rⁱⁿ scales the columns of ΔWᵢ, the input features it reads. The mᵢ start at 1 (the
exact sum) and are learned from

    L(m) = Σᵢ ‖ΔW_m·Xᵢ − ΔWᵢ·Xᵢ‖²  +  λ·Σ_{i<j} |cos(mᵢ, mⱼ)|

the first terms keep what each LoRA alone does to its own inputs Xᵢ (the base weight W₀ cancels in each), the
last pushes the LoRAs onto different columns, where the paper finds interference starts: columns that both
update in similar directions. The paper takes the first terms on the whole diffusion model's output and runs
100 gradient steps with λ = 0.01.

Here, as in activation-matched fusion (`lora.fusion`), each Linear layer is solved on its own from the inputs
recorded while each LoRA renders its own prompts: Xᵢ enters only through its Gram matrix Gᵢ = Xᵢ·Xᵢᵀ / nᵢ, since
‖E·Xᵢ‖² / nᵢ = tr(E·Gᵢ·Eᵀ). With the low-rank factors ΔWᵢ = Bᵢ·Aᵢ (the LoRA's α/r and wᵢ in Bᵢ), stacking
U = [B₁ … B_K | Bᵢ] and V = [A₁·diag(m₁); …; A_K·diag(m_K); −Aᵢ] gives E = U·V and

    tr(E·Gᵢ·Eᵀ) = Σ ((V·Gᵢ·Vᵀ) ∘ (Uᵀ·U))

a sum over (Σ r) × (Σ r) entries: the full out × in update is never formed. The reconstruction terms are divided
by Σᵢ tr(ΔWᵢ·Gᵢ·ΔWᵢᵀ), what the LoRAs do to their own inputs, so λ weighs the same at every layer. The merged
update stays low-rank, rank Σ rᵢ: ΔW_m = [B₁ … B_K]·[A₁·diag(m₁); …; A_K·diag(m_K)].

Only Linear layers with plain LoRA updates are merged (`fusion.fusable_keys`); other modules keep their exact
sum. This module imports only torch and does no I/O.
"""

from __future__ import annotations

import torch

from loramix.errors import LoramixError
from loramix.lora.adapter import LoraAdapter, LoraModule
from loramix.lora.compose import Weighted, _base, _check, _dense_sums, compose_svd, summed_rank
from loramix.lora.fusion import recorded_keys
from loramix.lora.lycoris_modules import FullModule

SIMILARITY_WEIGHT = 0.01  # λ, the paper's
STEPS = 100  # the paper's
LEARNING_RATE = 0.01  # Adam's step on the mergers, which start at 1: 100 steps may move a column to 0 and back


def _similarity(mergers: list[torch.Tensor]) -> torch.Tensor:
    """Σ_{i<j} |cos(mᵢ, mⱼ)|: how much the LoRAs' merger vectors lean on the same columns."""
    return sum(torch.nn.functional.cosine_similarity(mergers[i], mergers[j], dim=0).abs()
               for i in range(len(mergers)) for j in range(i + 1, len(mergers)))


def merger_loss(ups: list[torch.Tensor], downs: list[torch.Tensor], mergers: list[torch.Tensor],
                grams: list[torch.Tensor], similarity_weight: float = SIMILARITY_WEIGHT) -> torch.Tensor:
    """L(m) for one layer: `ups` Bᵢ (out × rᵢ, scale and weight in them), `downs` Aᵢ (rᵢ × in), `mergers` mᵢ (in)
    and `grams` Gᵢ (in × in), one per LoRA, in the same order. A LoRA that leaves the layer alone has rᵢ = 0."""
    stacked_up = torch.cat(ups, dim=1)  # (out, R)
    merged_down = torch.cat([down * merger for down, merger in zip(downs, mergers)])  # (R, in)
    error = own = 0
    for up, down, gram in zip(ups, downs, grams):
        u = torch.cat([stacked_up, up], dim=1)
        v = torch.cat([merged_down, -down])
        error = error + ((v @ gram @ v.T) * (u.T @ u)).sum()
        own = own + ((down @ gram @ down.T) * (up.T @ up)).sum()
    return error / own + similarity_weight * _similarity(mergers)


def learn_mergers(ups: list[torch.Tensor], downs: list[torch.Tensor], grams: list[torch.Tensor],
                  steps: int = STEPS, similarity_weight: float = SIMILARITY_WEIGHT,
                  learning_rate: float = LEARNING_RATE) -> list[torch.Tensor]:
    """The merger vectors mᵢ of one layer after `steps` Adam steps on `merger_loss` from mᵢ = 1 (float64).

    The loss is expanded once per layer so that a step costs three products. With Ã = [A₁·diag(m₁); …],
    U = [B₁ … B_K], G = Σᵢ Gᵢ and P = [G₁·A₁ᵀ … G_K·A_Kᵀ]:

        Σᵢ tr(Eᵢ·Gᵢ·Eᵢᵀ) = Σ ((Ã·G·Ãᵀ) ∘ (Uᵀ·U)) − 2·Σ ((Ã·P) ∘ (Uᵀ·U)) + own

    where own = Σᵢ tr(ΔWᵢ·Gᵢ·ΔWᵢᵀ): the second term's blocks pair Ãⱼ·Gᵢ·Aᵢᵀ with Bⱼᵀ·Bᵢ."""
    ups = [u.double() for u in ups]
    downs = [d.double() for d in downs]
    grams = [g.double() for g in grams]
    stacked_up = torch.cat(ups, dim=1)
    up_gram = stacked_up.T @ stacked_up  # (R, R)
    own = sum(((d @ g @ d.T) * (u.T @ u)).sum() for u, d, g in zip(ups, downs, grams))
    if not float(own) > 0:
        raise LoramixError("ziplora: no LoRA changes what its own recorded inputs give at this layer")
    total_gram = sum(grams)
    own_inputs = torch.cat([g @ d.T for d, g in zip(downs, grams)], dim=1)  # P: (in, R)
    mergers = [torch.ones(downs[0].shape[1], dtype=torch.float64, requires_grad=True) for _ in downs]
    optimizer = torch.optim.Adam(mergers, lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        merged_down = torch.cat([down * merger for down, merger in zip(downs, mergers)])  # Ã: (R, in)
        cross = ((merged_down @ total_gram @ merged_down.T) * up_gram).sum()
        kept = ((merged_down @ own_inputs) * up_gram).sum()
        ((cross - 2 * kept) / own + similarity_weight * _similarity(mergers)).backward()  # merger_loss less 1
        optimizer.step()
    return [m.detach() for m in mergers]


def compose_ziplora(weighted: Weighted, grams: list[dict[str, torch.Tensor]], rank: int | None = None,
                    names: list[str] | None = None, steps: int = STEPS,
                    similarity_weight: float = SIMILARITY_WEIGHT):
    """ZipLoRA's merge of `weighted` (adapter, weight) pairs, given each input's Gram matrices by module key
    (`grams[i][key]`, from `render.activations`): low-rank modules of rank Σ rᵢ, or with `rank` their best
    rank-`rank` approximations (with the SVD report). Modules it does not solve keep their exact weighted sum."""
    names = _check(weighted, names)
    solved = recorded_keys(weighted, grams, names, "ziplora")
    modules = {}
    for key in solved:
        width = next(a.modules[key].flat_shape for a, _ in weighted if key in a.modules)
        ups, downs = [], []
        for adapter, weight in weighted:
            module = adapter.modules.get(key)
            ups.append(module.up.float() * (weight * module.scale) if module else torch.zeros(width[0], 0))
            downs.append(module.down.float() if module else torch.zeros(0, width[1]))
        mergers = learn_mergers(ups, downs, [recorded[key] for recorded in grams], steps, similarity_weight)
        down = torch.cat([d * m.float() for d, m in zip(downs, mergers)])
        modules[key] = LoraModule(down, torch.cat(ups, dim=1), float(down.shape[0]))
    others = list(dict.fromkeys(key for adapter, _ in weighted for key in adapter.modules if key not in solved))
    modules.update({key: FullModule(delta) for key, delta in _dense_sums(weighted, others).items()})
    merged = LoraAdapter(modules, base_version=_base(weighted, names))
    if rank is None and not others:
        return merged, None
    return compose_svd([(merged, 1.0)], rank or summed_rank(weighted), [names[0]])
