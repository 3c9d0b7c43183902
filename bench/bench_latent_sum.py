"""How much can adding the attributes' changes in the toy VAE's latent show? The most an additive composition
could give: generator faces drawn plain, wearing each attribute alone and wearing them all (the same face), each
encoded by the toy base's VAE; the changes z_k − z_plain added onto z_plain, everywhere or each inside its mask
as `--method regional` adds them, decoded and judged, beside the round trip of the face drawn wearing them all
(what a joint LoRA could give at best).

First, for each pair of attributes, how often the two draw in a common latent pixel of the same face (each
attribute's drawn pixels, `attribute_mask` ungrown, taken to the 8 × 8 latent blocks they fall in), and the
share of the second's latent pixels the first draws in too, at 8 × 8 and at the 16 × 16 a VAE downsampling by 4
would give.

No denoising is involved: each LoRA is taken to draw its attribute perfectly, so what a row loses, the latent or
the masks lose. The masks: the shipped samples/regions (each attribute's box) and any folder of NAME.png given
with --regions. --write-regions DIR first writes regions of another kind there: where each attribute changes the
latent (`latent_region`, tried as samples/regions and not kept: docs/performance.md).

    python bench/bench_latent_sum.py --faces 400 [--write-regions DIR] [--regions DIR ...]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_methods import shown_cells
from PIL import Image

from loramix.cli.quiet import quiet_libraries
from loramix.models.load import load_pipeline
from loramix.render.regions import load_mask
from loramix.toy.face_drawing import attribute_mask
from loramix.toy.face_spec import sample_face
from loramix.toy.faces import draw_faces
from loramix.toy.judge import ATTRIBUTES, SIZE, load_judge, to_tensor

ROOT = Path(__file__).resolve().parents[1]
FIRST_SEED = 80_000  # the faces' seeds, FIRST_SEED on: neither a training set's nor the regions' own
REGION_SEED = 60_000  # the faces latent_region measures, REGION_SEED on
BATCH = 64


def variants(seed: int, attributes: tuple[str, ...]):
    """(plain, [each attribute alone], all of them) specs of one generator face."""
    worn = sample_face(seed, **dict.fromkeys(attributes, True))
    plain = replace(worn, **dict.fromkeys(attributes))
    return plain, [replace(plain, **{name: getattr(worn, name)}) for name in attributes], worn


@torch.no_grad()
def encoded(vae, specs) -> torch.Tensor:
    return torch.cat([vae.encode(to_tensor(draw_faces(specs[i:i + BATCH]))).latent_dist.mode()
                      for i in range(0, len(specs), BATCH)])


@torch.no_grad()
def decoded(vae, latents: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(latents[i:i + BATCH]).sample.clamp(-1, 1) for i in range(0, len(latents), BATCH)])


def latent_region(vae, attribute: str, faces: int = 400, full: float = 0.3) -> Image.Image:
    """m = min(c / full, 1), c the attribute's mean change of the latent per latent pixel over `faces` generator
    faces (‖z_worn − z_plain‖ over the channels, 1 at its peak), as a 64 × 64 image whose 8 × 8 blocks
    `load_mask` averages back to m exactly."""
    worn = [sample_face(REGION_SEED + i, **{attribute: True}) for i in range(faces)]
    change = encoded(vae, worn) - encoded(vae, [replace(spec, **{attribute: None}) for spec in worn])
    c = change.norm(dim=1).mean(0)  # (8, 8)
    mask = (c / c.max() / full).clamp(max=1)
    scale = SIZE // mask.shape[0]
    pixels = (mask * 255).round().to(torch.uint8).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return Image.fromarray(pixels.numpy(), mode="L")


def latent_pixels(drawn: torch.Tensor, scale: int) -> torch.Tensor:
    """(SIZE/scale)² booleans: the latent pixels whose scale × scale block holds a True pixel of `drawn`."""
    return drawn.reshape(SIZE // scale, scale, SIZE // scale, scale).any(dim=3).any(dim=1)


def shared_latent_pixels(first: str, second: str, faces: int, scales: tuple[int, ...]) -> tuple[float, list[float]]:
    """Over `faces` generator faces wearing both, each drawn once: the share of faces on which the two attributes
    draw in a common latent pixel at the first of `scales`, and at each scale the mean share of `second`'s latent
    pixels that `first` draws in too."""
    shared, shares = 0, [0.0] * len(scales)
    for i in range(faces):
        spec = sample_face(FIRST_SEED + i, **{first: True, second: True})
        drawn = [torch.from_numpy(np.asarray(attribute_mask(spec, SIZE, grow=0, attribute=name)) > 0)
                 for name in (first, second)]
        for k, scale in enumerate(scales):
            a, b = (latent_pixels(d, scale) for d in drawn)
            if k == 0:
                shared += bool((a & b).any())
            shares[k] += float((a & b).sum() / b.sum())
    return shared / faces, [share / faces for share in shares]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=400)
    parser.add_argument("--regions", type=Path, nargs="*", default=[], help="More mask folders (NAME.png).")
    parser.add_argument("--write-regions", type=Path, help="Write latent_region's masks here first, and read them.")
    args = parser.parse_args()
    pipeline = load_pipeline("toy", dtype=torch.float32)
    vae, scale = pipeline.vae, pipeline.vae_scale_factor
    judge = load_judge()
    folders = [ROOT / "samples" / "regions", *args.regions]
    if args.write_regions:
        args.write_regions.mkdir(parents=True, exist_ok=True)
        for name in ("mustache", "lipstick", "glasses"):
            latent_region(vae, name).save(args.write_regions / f"{name}.png")
        folders.append(args.write_regions)
    print(f"| {args.faces} generator faces wearing both | faces where they draw in a common latent pixel | "
          f"share of the second's latent pixels the first draws in too | the same at 16 × 16 latents |")
    print("|---|---|---|---|")
    for first, second in (("mustache", "lipstick"), ("mustache", "glasses"), ("lipstick", "glasses")):
        shared, (share, finer) = shared_latent_pixels(first, second, args.faces, (scale, scale // 2))
        print(f"| {first} + {second} | {shared:.0%} | {share:.0%} | {finer:.0%} |", flush=True)
    for attributes in (("mustache", "lipstick"), ("mustache", "lipstick", "glasses")):
        faces = [variants(FIRST_SEED + i, attributes) for i in range(args.faces)]
        z_plain, z_worn = encoded(vae, [f[0] for f in faces]), encoded(vae, [f[2] for f in faces])
        changes = [encoded(vae, [f[1][k] for f in faces]) - z_plain for k in range(len(attributes))]
        print(f"\n{args.faces} generator faces, {' + '.join(attributes)}, judged\n")
        print(f"| latents | {' | '.join(attributes)} | all {len(attributes)} | face |")
        print("|---|" + "---|" * (len(attributes) + 2))
        rows = [("VAE round trip, drawn wearing all", z_worn), ("latent changes added", z_plain + sum(changes))]
        masks = {str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder):
                 [load_mask(str(folder / f"{name}.png"), SIZE, SIZE, scale) for name in attributes]
                 for folder in folders}
        rows += [(f"… each in its mask: {label}", z_plain + sum(m * change for m, change in zip(mask, changes)))
                 for label, mask in masks.items()]
        for label, latents in rows:
            verdicts = judge.verdicts(decoded(vae, latents))
            print(f"| {label} | {shown_cells(verdicts, [ATTRIBUTES.index(n) for n in attributes])} |", flush=True)


if __name__ == "__main__":
    main()
