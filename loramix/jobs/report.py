"""What `loramix inspect` tells about an adapter file, as data the CLI prints or dumps as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from loramix.formats.metadata import SSHS_MODEL_HASH, shown_metadata
from loramix.formats.write import base_model_version, module_kind
from loramix.lora.adapter import LoraAdapter, component_of, path_of
from loramix.lora.lycoris_modules import flat
from loramix.models.shapes import BaseShapes
from loramix.util.hashes import file_hashes

BYTES_PER_PARAM = {"fp16": 2, "fp32": 4}


@dataclass
class BaseFit:
    """How the adapter sits on a base model."""

    base: str
    base_params: int
    fraction_of_base: float  # adapter parameters ÷ base parameters
    missing_targets: list[str]  # targets the base has no module for
    shape_mismatches: list[str]  # targets whose shapes differ from the base's weight


@dataclass
class AdapterReport:
    path: str
    format: str
    components: list[str]
    targets: dict[str, dict[str, int]]  # component → module kind → number of modules
    num_modules: int
    ranks: list[int]
    alphas: list[float]
    scales: list[float]
    num_params: int
    bytes_on_disk: int
    bytes_fp16: int
    bytes_fp32: int
    dtypes: list[str]
    metadata: dict[str, str]
    kinds: dict[str, int] = field(default_factory=dict)  # module type (LoRA, LoHa, LoKr, full, DoRA) → count
    base_version: str = ""  # kohya's ss_base_model_version, read or told from the keys and shapes
    hashes: dict[str, str] = field(default_factory=dict)  # the hashes sharing sites and UIs show
    base_fit: BaseFit | None = field(default=None)
    nonfinite_modules: list[str] = field(default_factory=list)  # modules with NaN or infinite factors

    def to_dict(self) -> dict:
        return asdict(self)


def report_adapter(path: str | Path, adapter: LoraAdapter, base: BaseShapes | None = None) -> AdapterReport:
    targets: dict[str, dict[str, int]] = {}
    for key in adapter.modules:
        kinds = targets.setdefault(component_of(key), {})
        kind = module_kind(path_of(key))
        kinds[kind] = kinds.get(kind, 0) + 1
    num_params = adapter.num_params
    return AdapterReport(
        path=str(path),
        format=adapter.source_format,
        components=adapter.components,
        targets=targets,
        num_modules=len(adapter.modules),
        ranks=adapter.ranks,
        alphas=adapter.alphas,
        scales=sorted({round(m.scale, 6) for m in adapter.modules.values()}),
        kinds=adapter.kinds,
        base_version=base_model_version(adapter),
        hashes=file_hashes_report(path),
        num_params=num_params,
        bytes_on_disk=Path(path).stat().st_size,
        bytes_fp16=num_params * BYTES_PER_PARAM["fp16"],
        bytes_fp32=num_params * BYTES_PER_PARAM["fp32"],
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for m in adapter.modules.values() for t in m.tensors}),
        metadata=shown_metadata(adapter.metadata),
        base_fit=fit_to_base(adapter, base) if base is not None else None,
        nonfinite_modules=[key for key, m in adapter.modules.items()
                           if not all(torch.isfinite(t).all() for t in m.tensors)],
    )


def file_hashes_report(path: str | Path) -> dict[str, str]:
    """A1111's `Lora hashes` value, Civitai's AutoV2 and the full SHA-256s (none for a peft folder)."""
    path = Path(path)
    if not path.is_file():
        return {}
    hashes = file_hashes(path, SSHS_MODEL_HASH)
    return {"a1111": hashes.a1111, "autov2": hashes.autov2, "sha256": hashes.sha256,
            "tensors_sha256": hashes.tensors_sha256}


def fit_to_base(adapter: LoraAdapter, base: BaseShapes) -> BaseFit:
    missing, mismatched = [], []
    for key, module in adapter.modules.items():
        shape = base.weight_shapes.get(key)
        if shape is None:
            missing.append(key)
        elif flat(tuple(shape)) != module.flat_shape:
            mismatched.append(f"{key}: adapter {module.weight_shape}, base {tuple(shape)}")
    return BaseFit(base.name, base.total_params, adapter.num_params / base.total_params, missing, mismatched)
