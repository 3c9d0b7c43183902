"""Composition methods compared by the judge on held-out seeds and phrasings: does the image show every LoRA's
attribute, is it still a face, and what else did the LoRAs change?

    python bench/bench_methods.py [--loras build/loras] [--weights mustache=1,lipstick=1,glasses=1]
                                  [--seeds 1000-1063] [--methods exact,switch,…] [--sets 2,3,mustache+glasses]
                                  [--judge FILE]
                                  [--set held-out|NAME of bench/heldout.py's COMPOSED_SETS] [--late-start 0.4]
                                  [--start mustache=0.6]
                                  [--grid docs/methods.png --grid-method exact]

For the pair mustache + lipstick and for all three LoRAs (with glasses), and for the pairs with the glasses where
a set phrases them (mustache + glasses, lipstick + glasses: EIGHTEENTH), renders every seed with each of three
phrasings of a prompt naming every attribute (seeds and phrasings that no LoRA was trained or tuned on), by the base
alone, each LoRA alone (exact) and every method in `loramix.choices.RENDER_METHODS` (read from there, so a method
added later is benched too; one that needs inputs the bench lacks is skipped with a note; sequential, which renders
one image at a time, only when --methods names it). merge-svd merges to rank 8; ties and dare keep density 0.5.
regional gives each LoRA its attribute's box (below; samples/regions, or NAME.png in --regions DIR) as its mask: the
region a user would paint for it; sequential gives it to each LoRA's stage, and reports per stage the change against
the stage before, outside the box and inside it, and how often the stage's attribute shows. fusion and ziplora
(`compose --method fusion`, `--method ziplora`) record each LoRA's layer inputs from its attribute's TUNE phrasings
of bench/heldout.py and render the composed whole differences. orthogonal is the exact sum of the same recipes
trained in orthogonal adaptation's slots (mustache 0, lipstick 1, glasses 2), each shown alone too.
regional-own-prompts is regional with each LoRA's calls conditioned on a prompt naming its attribute alone
(`--lora-prompt`, LORA_PROMPTS below). regional-late is regional with each LoRA on from 40% of the steps (LATE_START
below); regional-late-own-prompts is that with each LoRA's prompt its own; regional-staggered is that with the
mustache from 60% (STAGGERED_STARTS below), and comes with each LoRA rendered the same way alone. pixel-sum
(only when --methods names it) renders each LoRA's image apart, regional with its own mask and prompt (the
mustache from the first step, the others from 40%: PIXEL_SUM_STARTS), and adds their changes from the base's image
in pixels: M + L − B. The first rows are the ceiling: a LoRA trained on faces wearing every attribute of the set
(and with --joint-steps N, the same trained N steps).

Prints a markdown table per set: % of images with each attribute, % with all of them, % still a face (the
judge's face output, which rejects warped, smeared, blended and partial faces), two locality figures and
seconds per image. Locality is the mean absolute pixel change (0-255, over pixels and channels) against the
base's render at the same seed and prompt:
  top 40%   the top 40% of the image: hair, eyes, background, which no mustache or lipstick should touch
  outside   the pixels outside every benched attribute's box. An attribute's box is the union of
            `face_drawing.attribute_box` over 1,000 generated faces: wherever that attribute can be drawn on any face
            the generator makes (the faces move and vary in size, so it is larger than one face's box).

The LoRAs are the shipped recipes' (`recipes/*.toml`); any missing from --loras is trained first (about 3
minutes each on two cores). The default, 32 seeds (1000-1031) × 3 phrasings, keeps both sets under 10 minutes
on the shared 2-core development machine with one torch thread; --seeds 1000-1127 gives the full 128.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from heldout import COMPOSED_SETS

from loramix.choices import FUSION, RECORDED_METHODS, RENDER_METHODS, SEQUENTIAL, ZIPLORA
from loramix.cli.quiet import quiet_libraries
from loramix.errors import LoramixError
from loramix.lora.specs import WeightedFile, parse_weight_spec
from loramix.models.load import load_pipeline
from loramix.models.loras import PipelineLoras
from loramix.render.core import Composition
from loramix.render.images import labelled_grid
from loramix.render.loop import render_jobs
from loramix.render.prompts import ImageJob
from loramix.render.regions import MASKED_METHODS
from loramix.toy import faces
from loramix.toy.base import DEFAULT_GUIDANCE, DEFAULT_STEPS
from loramix.toy.judge import ATTRIBUTES, SIZE, load_judge, to_tensor

ROOT = Path(__file__).resolve().parents[1]
PHRASINGS = {  # every word is one token of the toy base's tokenizer (checked when the bench starts)
    ("mustache", "lipstick"): (
        "a face with a mustache and lipstick",
        "a smiling face with a mustache, wearing lipstick, on a grey background",
        "portrait of a person with a mustache and lipstick"),
    ("mustache", "lipstick", "glasses"): (
        "a face with a mustache and lipstick, wearing glasses",
        "a smiling face with a mustache, wearing lipstick and glasses, on a grey background",
        "portrait of a person with a mustache, lipstick and glasses"),
}
TOP_ROWS = round(0.4 * SIZE)
BATCH = 16
# Rendered one image at a time (a text-to-image, then an img2img per LoRA): left out unless --methods names it.
UNBATCHED = (SEQUENTIAL,)
GRID_SEEDS = 8


@dataclass
class Rendered:
    images: list  # PIL images, in the order of the jobs
    seconds_per_image: float
    stages: list = field(default_factory=list)  # sequential: each job's stages, stage 0 the base's render


def parse_seeds(text: str) -> list[int]:
    """'1000-1127' or '1000,1005,1010' (or a mix) → seeds."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds += range(int(first), int(last) + 1) if last else [int(first)]
    return seeds


# The exact sum of LoRAs trained by the same recipes in orthogonal adaptation's slots, one slot an attribute.
ORTHOGONAL = "orthogonal"
ATTRIBUTE_SLOTS = {"mustache": 0, "lipstick": 1, "glasses": 2}
# regional with a prompt per LoRA (`--lora-prompt`): each LoRA's region conditioned on its attribute alone.
OWN_PROMPTS = "regional-own-prompts"
LORA_PROMPTS = {"mustache": "a face with a mustache", "lipstick": "a face with lipstick",
                "glasses": "a face with glasses"}
# regional with each LoRA on from this fraction of the steps (`a.safetensors:1@0.4-1#mask.png`), the base
# alone before: chosen on the TUNE seeds with pair phrasings of their own (heldout.TUNE_PAIR, --set tune).
LATE = "regional-late"
LATE_START = 0.4
# regional-late with a prompt per LoRA, as OWN_PROMPTS: after the base alone has laid out the face, each LoRA's
# region follows its own attribute's prompt rather than the image's, which names the others.
LATE_OWN_PROMPTS = "regional-late-own-prompts"
# regional-late-own-prompts with the mustache starting later than the rest: its dark shape covers the lips that a
# LoRA from 0.4 has begun (chosen on seeds 1000-1063, LAST_SETS and NEXT_SETS, all read before).
STAGGERED = "regional-staggered"
STAGGERED_STARTS = {"mustache": 0.6}
# Each LoRA's own image, added in pixels to the others' changes from the base's (docs/performance.md, "Adding the
# LoRAs' images in pixels"): the mustache from the first step, chosen on the TUNE images (from 0.6: 82% both).
PIXEL_SUM = "pixel-sum"
PIXEL_SUM_STARTS = {"mustache": 0.0}


def from_step(files: dict[str, WeightedFile], starts: dict[str, float]) -> dict[str, WeightedFile]:
    """Each LoRA's file at its weight, acting from its start's fraction of the steps to the end
    (`a.safetensors:1@0.4-1`)."""
    return {n: parse_weight_spec(f"{f.path}:{f.weight:g}@{starts[n]:g}-1") for n, f in files.items()}


def own_regions_from_step(files: dict[str, WeightedFile], starts: dict[str, float], masks: dict[str, str],
                          prompts: dict[str, str]) -> tuple[WeightedFile, ...]:
    """Each LoRA acting from its start's fraction of the steps, in its mask, on its own prompt."""
    started = from_step(files, starts)
    return tuple(replace(started[n], mask=masks[n], prompt=prompts[n]) for n in files)


def starts_text(starts: dict[str, float]) -> str:
    """'from 0.6/0.4': each LoRA's start, in the order of the LoRAs."""
    return "from " + "/".join(f"{start:g}" for start in starts.values())


def lora_file(folder: Path, name: str, orthogonal_slot: int | None = None) -> Path:
    """The shipped recipe's LoRA, trained into `folder` unless it is there; with `orthogonal_slot`, the same
    recipe trained in that slot of orthogonal adaptation (`orthogonal_slot` recipe key)."""
    label = name if orthogonal_slot is None else f"{name}-slot{orthogonal_slot}"
    path = folder / f"{label}.safetensors"
    if not path.is_file():
        print(f"training {label} (recipes/{name}.toml) into {folder}", flush=True)
        run = folder / f"{label}-run"
        slot = [] if orthogonal_slot is None else ["--orthogonal-slot", str(orthogonal_slot)]
        subprocess.run([sys.executable, "-m", "loramix", "train", str(ROOT / "recipes" / f"{name}.toml"),
                        "--output", str(run), "--name", label, *slot], check=True)
        (run / f"{label}.safetensors").replace(path)
    return path


def joint_lora_file(folder: Path, names: tuple[str, ...], steps: int | None = None) -> Path:
    """The ceiling: one LoRA trained on faces wearing every attribute of `names` at once, by the first
    attribute's recipe (same steps, rank and data size as the single LoRAs), its dataset swapped. With `steps`,
    the same trained that many steps instead: what more training leaves the ceiling (same faces)."""
    joined = "+".join(names)
    label = joined + (f"-{steps}steps" if steps else "")
    path = folder / f"joint-{label}.safetensors"
    if not path.is_file():
        from loramix.toy.faces import write_dataset

        data, run = folder / f"joint-{joined}-data", folder / f"joint-{label}-run"
        recipe = ROOT / "recipes" / f"{names[0]}.toml"
        single_data = (recipe.parent / tomllib.loads(recipe.read_text())["dataset"]).resolve()
        count = len([f for f in single_data.glob("*.png") if not f.name.endswith(".mask.png")])
        write_dataset(data, count, seed=104 + len(names), masks=True, **dict.fromkeys(names, True))
        print(f"training the joint {label} LoRA ({recipe.name}, dataset {data}) into {folder}", flush=True)
        more = ["--steps", str(steps)] if steps else []
        subprocess.run([sys.executable, "-m", "loramix", "train", str(recipe), "--dataset", str(data),
                        "--output", str(run), "--name", f"joint-{label}", *more], check=True)
        (run / f"joint-{label}.safetensors").replace(path)
    return path


@cache
def attribute_regions(names: tuple[str, ...]) -> torch.Tensor:
    """(64, 64) booleans: True where any of `names`' attributes can be drawn on a generated face."""
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    for name in names:
        region |= torch.from_numpy(np.asarray(faces.attribute_region(name, size=SIZE)) > 0)
    return region


def pixels(images: list) -> torch.Tensor:
    """PIL images → (N, 3, 64, 64) in 0-255."""
    return (to_tensor(images) + 1) * 127.5


def locality(images: torch.Tensor, base: torch.Tensor, region: torch.Tensor) -> tuple[float, float]:
    """Mean |Δ pixel| (0-255) against the base's renders in the top 40% of the image, and outside `region`."""
    change = (images - base).abs().mean(dim=1)  # (N, 64, 64)
    return float(change[:, :TOP_ROWS].mean()), float(change[:, ~region].mean())


def render_all(pipeline, loras: PipelineLoras, files: tuple[WeightedFile, ...], composition: Composition,
               prompts: tuple[str, ...], seeds: list[int]) -> Rendered:
    jobs = [ImageJob("", 0, prompt, "", seed, DEFAULT_STEPS, DEFAULT_GUIDANCE, SIZE, SIZE, files)
            for prompt in prompts for seed in seeds]
    start = time.perf_counter()
    batches = list(render_jobs(pipeline, loras, jobs, composition, BATCH))
    images = [image for batch in batches for image in batch.images]
    return Rendered(images, (time.perf_counter() - start) / len(jobs), [s for batch in batches for s in batch.stages])


def pixel_sum(base: Rendered, base_pixels: torch.Tensor, own: list[Rendered]) -> Rendered:
    """The base's images (`base_pixels`, their `pixels`) plus each LoRA's own image's change from them, in 0-255
    pixels, rounded and clipped."""
    from PIL import Image

    total = base_pixels + sum(pixels(r.images) - base_pixels for r in own)
    arrays = total.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    seconds = base.seconds_per_image + sum(r.seconds_per_image for r in own)
    return Rendered([Image.fromarray(a) for a in arrays], seconds)


def shown_cells(verdicts: torch.Tensor, columns: list[int]) -> str:
    """A row's judged cells: how often each attribute in `columns` shows, all of them at once, and a face."""
    shown = [f"{verdicts[:, c].float().mean():.0%}" for c in columns]
    every = verdicts[:, columns].all(dim=1).float().mean()
    return " | ".join([*shown, f"{every:.0%}", f"{verdicts[:, 0].float().mean():.0%}"])


def stage_report(result: Rendered, names: tuple[str, ...], judge) -> list[str]:
    """Per stage of a sequential render: the mean |Δ pixel| against the stage before, outside the stage's
    attribute box and inside it, and how often the stage's attribute shows (markdown rows)."""
    rows = []
    for i, name in enumerate(names, 1):
        before, after = (pixels([stages[k].image for stages in result.stages]) for k in (i - 1, i))
        change = (after - before).abs().mean(dim=1)  # (N, 64, 64)
        box = attribute_regions((name,))
        shown = judge.verdicts([stages[i].image for stages in result.stages])[:, ATTRIBUTES.index(name)]
        rows.append(f"| … stage {i}: {name} | Δ outside its box {float(change[:, ~box].mean()):.2f} | "
                    f"Δ inside {float(change[:, box].mean()):.1f} | {name} {shown.float().mean():.0%} |")
    return rows


def recorded_file(method: str, pipeline, loras: PipelineLoras, files: dict[str, WeightedFile],
                  names: tuple[str, ...], folder: Path) -> tuple[WeightedFile, float]:
    """The LoRAs of `names` composed by a method that records their layer inputs (`compose --method fusion` or
    `ziplora`), the inputs recorded from each attribute's TUNE phrasings (bench/heldout.py: none is a phrasing
    measured here), written as whole differences: (the file at weight 1, the seconds recording and solving
    took)."""
    from heldout import TUNE

    from loramix.formats.read import read_weighted
    from loramix.formats.write import write_adapter
    from loramix.lora.fusion import compose_fusion
    from loramix.lora.ziplora import compose_ziplora
    from loramix.render.activations import FusionPrompts, record_fusion_grams

    start = time.perf_counter()
    ordered = [files[name] for name in names]
    prompts = [FusionPrompts(TUNE[name], "bench/heldout.py TUNE") for name in names]
    grams = record_fusion_grams(pipeline, loras, ordered, prompts, DEFAULT_STEPS, DEFAULT_GUIDANCE, SIZE)
    compose = {FUSION: compose_fusion, ZIPLORA: compose_ziplora}[method]
    composed, _ = compose(read_weighted(ordered), grams, names=[f.path for f in ordered])
    path = folder / f"{method}-{'+'.join(names)}.safetensors"
    write_adapter(composed, path, format="full-diff")
    return WeightedFile(str(path), 1.0), time.perf_counter() - start


def chosen(names: tuple[str, ...], sets: str) -> bool:
    """Whether --sets ('2,3', 'mustache+glasses') asks for the set of LoRAs `names`."""
    return any(item == str(len(names)) or item == "+".join(names) for item in sets.split(","))


def per_lora(parser: argparse.ArgumentParser, flag: str, items: list[str], form: str, parse, more: str = "") -> dict:
    """A repeatable flag's NAME=VALUE items by LoRA name, each VALUE read by `parse` (None or ValueError: not one);
    a bad item ends the bench with the flag's one-line usage error."""
    values = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value = parse(text) if sep and name in LORA_PROMPTS else None
        except ValueError:
            value = None
        if value is None:
            parser.error(f"{flag} {item!r}: give {form}, NAME one of {', '.join(LORA_PROMPTS)}{more}")
        values[name] = value
    return values


def composition_of(method: str) -> Composition:
    return Composition(method, rank=8 if method == "merge-svd" else None)


def check_vocabulary(pipeline) -> None:
    """Say so when a phrasing has a word the toy tokenizer splits into pieces (a word the base never saw)."""
    tokenizer = pipeline.tokenizer
    words = {word.strip(",") for prompts in PHRASINGS.values() for prompt in prompts for word in prompt.split()}
    unknown = sorted(word for word in words if len(tokenizer.tokenize(word)) != 1)
    if unknown:
        print(f"note: not single tokens of the base's vocabulary: {', '.join(unknown)}")


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=Path, default=ROOT / "build" / "loras")
    parser.add_argument("--weights", default="mustache=1.0,lipstick=1.0,glasses=1.0",
                        help="Weight of each LoRA, the same for every method.")
    parser.add_argument("--seeds", help="Seeds, e.g. 1000-1127 or 1000,1002 (default: 1000-1031; with --set NAME, "
                                        "bench/heldout.py's NAME_SEEDS, e.g. FRESH_SEEDS for fresh).")
    newest = [*COMPOSED_SETS][-1]
    parser.add_argument("--set", choices=("held-out", *COMPOSED_SETS), default="held-out",
                        help="tune: the pair only, on bench/heldout.py's TUNE_PAIR phrasings, for choosing settings; "
                             f"{', '.join([*COMPOSED_SETS][1:])}: its NAME_SETS and NAME_SEEDS, the newest, {newest}, "
                             "the one no choice was made on.")
    parser.add_argument("--late-start", type=float, default=LATE_START,
                        help="regional-late: the fraction of the steps from which the LoRAs act.")
    parser.add_argument("--start", action="append", default=[], metavar="NAME=FRACTION",
                        help="regional-staggered: where NAME starts, instead of STAGGERED_STARTS' (repeatable).")
    parser.add_argument("--methods", default=",".join([*(m for m in RENDER_METHODS if m not in UNBATCHED),
                                                       *RECORDED_METHODS, ORTHOGONAL, OWN_PROMPTS, LATE,
                                                       LATE_OWN_PROMPTS, STAGGERED]))
    parser.add_argument("--sets", default="2,3",
                        help="Which sets: a count (2: every pair the set phrases, 3: all three) or LoRAs joined by "
                             "+ (mustache+glasses), comma-separated.")
    parser.add_argument("--judge", type=Path, help="Judge weights (default: the shipped judge).")
    parser.add_argument("--grid", type=Path, help="Save the pair and the triple by --grid-method: a row of "
                                                  f"{GRID_SEEDS} seeds each, under the base's renders.")
    parser.add_argument("--grid-method", default="exact")
    parser.add_argument("--per-phrasing", action="store_true",
                        help="Under every row, its phrasings' figures: every attribute and face, each phrasing.")
    parser.add_argument("--joint-steps", type=int, help="Also a joint LoRA trained this many steps (the recipe's "
                        "other keys and faces unchanged): what more training leaves the ceiling.")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="Only the base and the methods: no ceiling, no LoRA alone (comparing masks or starts on "
                             "sets whose reference rows are already measured).")
    parser.add_argument("--first", type=int, help="Only the first N seeds (the read sets' rounds used 64).")
    parser.add_argument("--regions", type=Path, default=ROOT / "samples" / "regions",
                        help="The regional rows' masks: NAME.png in this folder.")
    parser.add_argument("--lora-prompt", action="append", default=[], metavar="NAME=TEXT",
                        help="The prompt of NAME's own call in the rows that give each LoRA one, instead of "
                             "LORA_PROMPTS' (repeatable).")
    args = parser.parse_args()
    lora_prompts = {**LORA_PROMPTS, **per_lora(parser, "--lora-prompt", args.lora_prompt, "NAME=TEXT",
                                               lambda text: text if text.strip() else None)}
    staggered_starts = {**STAGGERED_STARTS, **per_lora(parser, "--start", args.start, "NAME=FRACTION",
                                                       lambda text: float(text) if 0 <= float(text) <= 1 else None,
                                                       ", FRACTION in [0, 1]")}
    left_out = [m for m in UNBATCHED if m not in args.methods.split(",")]
    if left_out:
        print(f"note: {', '.join(left_out)} renders one image at a time (about 10× the others' cost here); "
              f"--methods {','.join(RENDER_METHODS)} adds it")

    torch.manual_seed(0)
    phrasings, default_seeds = {**COMPOSED_SETS, "held-out": (PHRASINGS, range(1000, 1032))}[args.set]
    seeds = (parse_seeds(args.seeds) if args.seeds else list(default_seeds))[:args.first]
    weights = {name: float(value) for name, value in (item.split("=") for item in args.weights.split(","))}
    methods = list(dict.fromkeys(args.methods.split(",") + ([args.grid_method] if args.grid else [])))
    args.loras.mkdir(parents=True, exist_ok=True)
    judge = load_judge(args.judge)
    pipeline = load_pipeline("toy")
    check_vocabulary(pipeline)
    loras = PipelineLoras(pipeline)
    grid_rows, grid_labels = [], []
    scratch = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    for names in [names for names in phrasings if chosen(names, args.sets)]:
        prompts = phrasings[names]
        files = {name: WeightedFile(str(lora_file(args.loras, name)), weights[name]) for name in names}
        columns = [ATTRIBUTES.index(name) for name in names]
        together = "/".join(f"{weights[n]:g}" for n in names)  # the weights of a row that composes them all
        print(f"\n{' + '.join(f'{n}:{weights[n]:g}' for n in names)}: seeds {seeds[0]}…{seeds[-1]} ({len(seeds)}) "
              f"× {len(prompts)} phrasings = {len(seeds) * len(prompts)} images per row, {DEFAULT_STEPS} steps, "
              f"guidance {DEFAULT_GUIDANCE:g}\n")
        print(f"| method | weights | {' | '.join(names)} | all {len(names)} | face | Δ top 40% | Δ outside | s/image |")
        print("|---|---|" + "---|" * (len(names) + 5))
        base = render_all(pipeline, loras, (), Composition(), prompts, seeds)
        base_pixels = pixels(base.images)
        rows = [("base", "", (), "exact", None)]
        if args.reference:
            joint = WeightedFile(str(joint_lora_file(args.loras, names)), 1.0)
            rows += [("joint LoRA (the ceiling)", "1", (joint,), "exact", names)]
        if args.joint_steps:
            longer = WeightedFile(str(joint_lora_file(args.loras, names, args.joint_steps)), 1.0)
            rows += [(f"joint LoRA, {args.joint_steps} steps", "1", (longer,), "exact", names)]
        if args.reference:
            rows += [(f"{name} alone", f"{files[name].weight:g}", (files[name],), "exact", (name,))
                     for name in names]
        masks = {n: str(args.regions / f"{n}.png") for n in names}
        rows += [(method, together,
                  tuple(replace(files[n], mask=masks[n]) if method in MASKED_METHODS else files[n] for n in names),
                  method, names)
                 for method in methods
                 if method not in (*RECORDED_METHODS, ORTHOGONAL, OWN_PROMPTS, LATE, LATE_OWN_PROMPTS, STAGGERED,
                                   PIXEL_SUM)]
        if LATE in methods:
            late = from_step(files, dict.fromkeys(names, args.late_start))
            rows.append((LATE, f"{together} from {args.late_start:g}",
                         tuple(replace(late[n], mask=masks[n]) for n in names), "regional", names))
        if LATE_OWN_PROMPTS in methods:
            rows.append((LATE_OWN_PROMPTS, f"{together} from {args.late_start:g}",
                         own_regions_from_step(files, dict.fromkeys(names, args.late_start), masks, lora_prompts),
                         "regional", names))
        if STAGGERED in methods:
            starts = {n: staggered_starts.get(n, args.late_start) for n in names}
            staggered = own_regions_from_step(files, starts, masks, lora_prompts)
            # each LoRA the same way with no other beside it: what the way costs, apart from the company's cost
            rows += [(f"{n} alone, {STAGGERED}", f"{files[n].weight:g} from {starts[n]:g}", (staggered[i],),
                      "regional", (n,)) for i, n in enumerate(names) if args.reference]
            rows.append((STAGGERED, f"{together} {starts_text(starts)}", staggered, "regional", names))
        if OWN_PROMPTS in methods:
            rows.append((OWN_PROMPTS, together,
                         tuple(replace(files[n], mask=masks[n], prompt=lora_prompts[n]) for n in names), "regional",
                         names))
        if ORTHOGONAL in methods:
            slotted = {n: WeightedFile(str(lora_file(args.loras, n, ATTRIBUTE_SLOTS[n])), weights[n]) for n in names}
            rows += [(f"{n} alone, slot {ATTRIBUTE_SLOTS[n]}", f"{weights[n]:g}", (slotted[n],), "exact", (n,))
                     for n in names]
            rows.append((ORTHOGONAL, together, tuple(slotted.values()), "exact", names))
        for method in (m for m in RECORDED_METHODS if m in methods):
            composed, seconds = recorded_file(method, pipeline, loras, files, names, scratch)
            print(f"({method}: layer inputs recorded and solved in {seconds:.0f} s)", flush=True)
            rows.append((method, together, (composed,), "exact", names))
        if PIXEL_SUM in methods:
            starts = {n: PIXEL_SUM_STARTS.get(n, args.late_start) for n in names}
            rows.append((PIXEL_SUM, f"{together} {starts_text(starts)}",
                         own_regions_from_step(files, starts, masks, lora_prompts), PIXEL_SUM, names))
        for label, weight_text, row_files, method, region_names in rows:
            try:
                if label == "base":
                    result = base
                elif method == PIXEL_SUM:
                    own = [render_all(pipeline, loras, (f,), composition_of("regional"), prompts, seeds)
                           for f in row_files]
                    result = pixel_sum(base, base_pixels, own)
                else:
                    result = render_all(pipeline, loras, row_files, composition_of(method), prompts, seeds)
            except LoramixError as e:  # e.g. a method that needs masks or an input image the bench has not
                print(f"| {label} | skipped: {e} |")
                continue
            verdicts = judge.verdicts(result.images)  # (N, 4): face, mustache, lipstick, glasses
            if region_names is None:
                top, outside = "–", "–"
            else:
                figures = locality(pixels(result.images), base_pixels, attribute_regions(region_names))
                top, outside = (f"{figure:.1f}" for figure in figures)
            print(f"| {label} | {weight_text} | {shown_cells(verdicts, columns)} | {top} | {outside} | "
                  f"{result.seconds_per_image:.3f} |", flush=True)
            if args.per_phrasing and label != "base":
                for prompt, by_phrasing in zip(prompts, verdicts.reshape(len(prompts), len(seeds), -1)):
                    print(f"| … {prompt} | | {shown_cells(by_phrasing, columns)} | | | |")
            if result.stages:
                print("\n".join(stage_report(result, names, judge)), flush=True)
            if args.grid and label in ("base", "joint LoRA (the ceiling)", args.grid_method):
                grid_rows.append(result.images[: min(GRID_SEEDS, len(seeds))])  # the first phrasing's
                grid_labels.append(f"{'+'.join(names)}, {label}" if label != "base" else "base")
    if args.grid and grid_rows:
        title = f"{args.grid_method}, each set's first phrasing"
        grid = labelled_grid(grid_rows, [f"seed {seed}" for seed in seeds[:GRID_SEEDS]], grid_labels, scale=2,
                             title=title)
        grid.image.save(args.grid)
        print(f"\nwrote {args.grid}")


if __name__ == "__main__":
    main()
