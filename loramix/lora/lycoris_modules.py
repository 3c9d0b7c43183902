"""LyCORIS updates that are not two low-rank factors: LoHa, LoKr, full differences and DoRA.

Each is one pure ΔW, as A1111's `extensions-builtin/Lora` and ComfyUI's `weight_adapter` compute it, with the
scale s = α / r when the file gives α and the module has a rank r, else 1:

    LoHa (Hyeon-Woo et al. 2022, FedPara):  ΔW = (W1a·W1b) ⊙ (W2a·W2b) · s            r = rows of W1b
        with Tucker cores T1, T2 (conv):    Wi = T_i ×₁ Wia ×₂ Wibᵀ  (einsum "i j k l, j r, i p -> p r k l")
    LoKr (Yeh et al. 2023, arXiv 2309.14859): ΔW = kron(W1, W2) · s,  W1 = W1a·W1b or whole, W2 likewise
                                                                     r = rows of W1b, else of W2b
    full ("diff"):                          ΔW = D
    DoRA (Liu et al. 2024, arXiv 2402.09353): W' = m · (W + ΔW) / ‖W + ΔW‖   (norm along the axis m spans)

The first three add, so Σ wᵢ·ΔWᵢ is exact as a dense ΔW; DoRA renormalises the weight it lands on, so it does
not add and is only ever applied to a weight. A conv LoHa or LoKr without a Tucker core stores its kernel
flattened: ΔW comes out (out, in·kh·kw) and is reshaped to the layer's kernel where the layer is known.

Every module type has `delta()`, `weight_shape`, `flat_shape`, `scaled(f)` (ΔW·f, exactly: f goes into a
scalar, never into the stored factors) and `tensors`. This module imports only torch and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from loramix.lora.adapter import LoraModule


def tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """T ×₁ aᵀ ×₂ bᵀ: core (r, r, kh, kw), a (r, out), b (r, in) → (out, in, kh, kw)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, b, a)


def _scale(alpha: float | None, rank: int | None) -> float:
    return alpha / rank if alpha is not None and rank else 1.0


class _Module:
    """What every module type shares; each sets `multiplier`, `tensors` and `weight_shape`."""

    multiplier: float

    @property
    def flat_shape(self) -> tuple[int, int]:
        return flat(self.weight_shape)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def scaled(self, factor: float):
        """ΔW·factor, exactly: the factor joins the multiplier, the stored tensors stay as they are."""
        return replace(self, multiplier=self.multiplier * factor)

    def to(self, dtype: torch.dtype):
        return replace(self, **{k: v.to(dtype) for k, v in vars(self).items() if isinstance(v, torch.Tensor)})


@dataclass
class LohaModule(_Module):
    """ΔW = (w1a·w1b) ⊙ (w2a·w2b) · α/r; with Tucker cores t1, t2 each product is tucker(t, a, b)."""

    w1a: torch.Tensor  # (out, r), or (r, out) with t1
    w1b: torch.Tensor  # (r, in·kh·kw), or (r, in) with t1
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None
    t1: torch.Tensor | None = None  # (r, r, kh, kw)
    t2: torch.Tensor | None = None
    multiplier: float = 1.0
    kind = "LoHa"

    @property
    def rank(self) -> int:
        return self.w1b.shape[0]

    @property
    def scale(self) -> float:
        return _scale(self.alpha, self.rank) * self.multiplier

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w1a, self.w1b, self.w2a, self.w2b, self.t1, self.t2) if t is not None]

    def _product(self, a, b, t, dtype) -> torch.Tensor:
        if t is None:
            return a.to(dtype) @ b.to(dtype)
        return tucker(t.to(dtype), a.to(dtype), b.to(dtype))

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._product(self.w1a, self.w1b, self.t1, dtype) * self._product(self.w2a, self.w2b, self.t2, dtype) \
            * self.scale

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.t1 is not None:
            return (self.w1a.shape[1], self.w1b.shape[1], *self.t1.shape[2:])
        return (self.w1a.shape[0], self.w1b.shape[1])



@dataclass
class LokrModule(_Module):
    """ΔW = kron(W1, W2) · α/r, W1 = w1 or w1a·w1b, W2 = w2, w2a·w2b or tucker(t2, w2a, w2b)."""

    w1: torch.Tensor | None
    w1a: torch.Tensor | None
    w1b: torch.Tensor | None
    w2: torch.Tensor | None
    w2a: torch.Tensor | None
    w2b: torch.Tensor | None
    alpha: float | None
    t2: torch.Tensor | None = None
    multiplier: float = 1.0
    kind = "LoKr"

    @property
    def rank(self) -> int | None:
        """The rank α is divided by, as A1111 takes it: W1's if W1 is factored, else W2's, else none (s = 1)."""
        if self.w1b is not None:
            return self.w1b.shape[0]
        if self.w2b is not None:
            return self.w2b.shape[0]
        return None

    @property
    def scale(self) -> float:
        return _scale(self.alpha, self.rank) * self.multiplier

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b, self.t2) if t is not None]

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = self.w1.to(dtype) if self.w1 is not None else self.w1a.to(dtype) @ self.w1b.to(dtype)
        if self.w2 is not None:
            w2 = self.w2.to(dtype)
        elif self.t2 is not None:
            w2 = tucker(self.t2.to(dtype), self.w2a.to(dtype), self.w2b.to(dtype))
        else:
            w2 = self.w2a.to(dtype) @ self.w2b.to(dtype)
        return w1, w2

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w1, w2 = self.factors(dtype)
        if w2.dim() == 4:  # a conv kernel: W1's entries scale whole (kh, kw) blocks
            w1 = w1[:, :, None, None]
        return torch.kron(w1.contiguous(), w2.contiguous()) * self.scale

    @property
    def weight_shape(self) -> tuple[int, ...]:
        w1 = self.w1.shape if self.w1 is not None else (self.w1a.shape[0], self.w1b.shape[1])
        if self.w2 is not None:
            w2 = tuple(self.w2.shape)
        elif self.t2 is not None:
            w2 = (self.w2a.shape[1], self.w2b.shape[1], *self.t2.shape[2:])
        else:
            w2 = (self.w2a.shape[0], self.w2b.shape[1])
        return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])



@dataclass
class FullModule(_Module):
    """ΔW stored whole (LyCORIS 'full', key `diff`): ΔW = D."""

    diff: torch.Tensor
    multiplier: float = 1.0
    kind = "full"
    alpha = None
    rank = None

    @property
    def scale(self) -> float:
        return self.multiplier

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [self.diff]

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.diff.to(dtype) * self.multiplier

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.diff.shape)



@dataclass
class DoraModule(_Module):
    """A LoRA whose result is renormalised: W' = m · (W + ΔW) / ‖W + ΔW‖, ΔW the LoRA's."""

    lora: LoraModule
    magnitude: torch.Tensor  # m: (out, 1[, 1, 1]) normalises each output row, (1, in[, 1, 1]) each input column
    multiplier: float = 1.0
    kind = "DoRA"

    @property
    def rank(self) -> int:
        return self.lora.rank

    @property
    def alpha(self) -> float:
        return self.lora.alpha

    @property
    def scale(self) -> float:
        return self.lora.scale * self.multiplier

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [self.lora.down, self.lora.up, self.magnitude]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.lora.weight_shape

    def to(self, dtype: torch.dtype) -> DoraModule:
        return replace(self, lora=self.lora.to(dtype), magnitude=self.magnitude.to(dtype))

    def applied(self, weight: torch.Tensor) -> torch.Tensor:
        """W' at strength w = multiplier, as A1111 and LyCORIS apply it: W + w·(m·(W+ΔW)/‖W+ΔW‖ − W), ΔW the
        LoRA's at scale α/r; the norm runs over every axis but the one m spans (plus ε, as the loaders add)."""
        w0 = weight.double()
        merged = w0 + self.lora.delta(torch.float64).reshape(w0.shape)
        magnitude = self.magnitude.double()  # (out, 1, …) or (1, in, …), as the reader shaped it
        along_out = magnitude.shape[1] == 1 and magnitude.shape[0] == merged.shape[0]
        per_row = merged.reshape(merged.shape[0], -1) if along_out else merged.transpose(0, 1).reshape(
            merged.shape[1], -1)
        norm = per_row.norm(dim=1) + torch.finfo(weight.dtype).eps
        shape = [1] * merged.dim()
        shape[0 if along_out else 1] = -1
        renormalised = merged * (magnitude.reshape(shape) / norm.reshape(shape))
        return (w0 + self.multiplier * (renormalised - w0)).to(weight.dtype)


ADDITIVE_KINDS = ("LoRA", "LoHa", "LoKr", "full")


def flat(shape: tuple[int, ...]) -> tuple[int, int]:
    """A weight shape as the matrix the maths sees: (out, in·kh·kw)."""
    return (shape[0], math.prod(shape[1:]))
