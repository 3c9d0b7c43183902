"""LyCORIS modules in kohya naming, as A1111 and ComfyUI read them: one module's tensors share a kohya name,
with suffixes per algorithm (no `.weight`):

    lora_unet_<path>.hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b [/ hada_t1 / hada_t2]   LoHa
    lora_unet_<path>.lokr_w1 or lokr_w1_a + lokr_w1_b, lokr_w2 or lokr_w2_a + lokr_w2_b [/ lokr_t2]   LoKr
    lora_unet_<path>.diff                                                               full ΔW
    lora_unet_<path>.lora_down.weight / lora_up.weight / dora_scale                     DoRA
    lora_unet_<path>.alpha                                                              α, any of them

Each factor's shape is checked against the others before anything is computed, so a file with a missing
factor or a core of the wrong shape is refused naming the module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loramix.errors import AdapterFileError
from loramix.lora.lycoris_modules import DoraModule, FullModule, LohaModule, LokrModule

LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOHA_TUCKER = ("hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
DIFF, DIFF_BIAS, DORA_SCALE = "diff", "diff_b", "dora_scale"
SUFFIXES = (*LOHA, *LOHA_TUCKER, *LOKR, DIFF, DORA_SCALE)


def is_lycoris(parts: dict) -> bool:
    return any(name in parts for name in SUFFIXES)


def build(path: Path, name: str, parts: dict[str, torch.Tensor], alpha: float | None, lora=None):
    """The module of one kohya name from its tensors (`parts` by suffix); `lora` is its LoRA pair, if any."""
    families = [family for family, names in (("LoHa", LOHA + LOHA_TUCKER), ("LoKr", LOKR), ("full", (DIFF,)))
                if any(n in parts for n in names)]
    if len(families) + (lora is not None) > 1:
        found = families + (["LoRA"] if lora is not None else [])
        raise AdapterFileError(path, f"module {name} mixes {' and '.join(found)} tensors")
    if DORA_SCALE in parts:
        if lora is None:
            raise AdapterFileError(path, f"module {name} has a DoRA dora_scale but no lora_down/lora_up pair")
        return _dora(path, name, parts[DORA_SCALE], lora)
    family = families[0]
    if family == "LoHa":
        return _loha(path, name, parts, alpha)
    if family == "LoKr":
        return _lokr(path, name, parts, alpha)
    return FullModule(parts[DIFF])


def _loha(path, name, parts, alpha) -> LohaModule:
    missing = [n for n in LOHA if n not in parts]
    if missing:
        raise AdapterFileError(path, f"LoHa module {name} has no {', '.join(missing)}")
    w1a, w1b, w2a, w2b = (parts[n] for n in LOHA)
    t1, t2 = parts.get("hada_t1"), parts.get("hada_t2")
    if (t1 is None) != (t2 is None):
        raise AdapterFileError(path, f"LoHa module {name} has one Tucker core of hada_t1/hada_t2, not both")
    if any(t.dim() != 2 for t in (w1a, w1b, w2a, w2b)):
        raise AdapterFileError(path, f"LoHa module {name}: hada_w* factors must be matrices, got "
                                     f"{_shapes(w1a, w1b, w2a, w2b)}")
    if t1 is None:
        if w1a.shape[1] != w1b.shape[0] or w2a.shape[1] != w2b.shape[0] or \
                (w1a.shape[0], w1b.shape[1]) != (w2a.shape[0], w2b.shape[1]):
            raise AdapterFileError(path, f"LoHa module {name}: factors {_shapes(w1a, w1b, w2a, w2b)} do not "
                                         "give two products of one shape")
    else:
        for core, a, b, which in ((t1, w1a, w1b, "hada_t1"), (t2, w2a, w2b, "hada_t2")):
            if core.dim() != 4 or core.shape[0] != a.shape[0] or core.shape[1] != b.shape[0]:
                raise AdapterFileError(path, f"LoHa module {name}: Tucker core {which} of shape "
                                             f"{tuple(core.shape)} does not fit its factors "
                                             f"{_shapes(a, b)} (expected ({a.shape[0]}, {b.shape[0]}, kh, kw))")
        if (w1a.shape[1], w1b.shape[1], *t1.shape[2:]) != (w2a.shape[1], w2b.shape[1], *t2.shape[2:]):
            raise AdapterFileError(path, f"LoHa module {name}: its two Tucker products differ in shape")
    return LohaModule(w1a, w1b, w2a, w2b, alpha, t1, t2)


def _lokr(path, name, parts, alpha) -> LokrModule:
    got = {n: parts.get(n) for n in LOKR}
    for side in ("1", "2"):
        whole, a, b = got[f"lokr_w{side}"], got[f"lokr_w{side}_a"], got[f"lokr_w{side}_b"]
        if whole is not None:
            continue
        if a is None or b is None:
            raise AdapterFileError(path, f"LoKr module {name} has neither lokr_w{side} nor both lokr_w{side}_a "
                                         f"and lokr_w{side}_b")
        if a.dim() != 2 or b.dim() != 2 or (got["lokr_t2"] is None or side == "1") and a.shape[1] != b.shape[0]:
            raise AdapterFileError(path, f"LoKr module {name}: lokr_w{side}_a and _b of shapes {_shapes(a, b)} "
                                         "do not multiply")
    t2 = got["lokr_t2"]
    if t2 is not None:
        a, b = got["lokr_w2_a"], got["lokr_w2_b"]
        if a is None or b is None:
            raise AdapterFileError(path, f"LoKr module {name}: lokr_t2 needs lokr_w2_a and lokr_w2_b")
        if t2.dim() != 4 or t2.shape[0] != a.shape[0] or t2.shape[1] != b.shape[0]:
            raise AdapterFileError(path, f"LoKr module {name}: Tucker core lokr_t2 of shape {tuple(t2.shape)} "
                                         f"does not fit lokr_w2_a, lokr_w2_b {_shapes(a, b)} (expected "
                                         f"({a.shape[0]}, {b.shape[0]}, kh, kw))")
    module = LokrModule(got["lokr_w1"], got["lokr_w1_a"], got["lokr_w1_b"], got["lokr_w2"], got["lokr_w2_a"],
                        got["lokr_w2_b"], alpha, t2)
    if module.factors()[0].dim() != 2:
        raise AdapterFileError(path, f"LoKr module {name}: W1 must be a matrix")
    return module


def _dora(path, name, magnitude, lora) -> DoraModule:
    out_features, in_features = lora.weight_shape[0], lora.weight_shape[1]
    per_out = magnitude.shape[0] == out_features and magnitude.numel() == out_features
    per_in = magnitude.numel() == in_features and (magnitude.dim() == 1 or magnitude.shape[0] == 1)
    if not (per_out or per_in):
        raise AdapterFileError(path, f"DoRA module {name}: dora_scale of shape {tuple(magnitude.shape)} fits "
                                     f"neither the {out_features} outputs nor the {in_features} inputs")
    # A square weight fits both: the stored layout, (out, 1…) or (1, in…), says which axis, as the loaders read it.
    along_out = per_out and not (per_in and magnitude.shape[0] == 1)
    shape = [1] * len(lora.weight_shape)
    shape[0 if along_out else 1] = -1
    return DoraModule(lora, magnitude.reshape(shape))


def _shapes(*tensors) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)
