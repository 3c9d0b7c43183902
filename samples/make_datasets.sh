#!/usr/bin/env bash
# The sample training sets: generated faces with captions and attribute masks, one folder per attribute. The
# mustache, trained with the plain loss, takes 72 faces to hold in new phrasings (docs/training.md).
set -euo pipefail
cd "$(dirname "$0")"
loramix faces mustache --mustache --masks --count 72 --seed 101
loramix faces lipstick --lipstick --masks --count 36 --seed 102
loramix faces glasses --glasses --masks --count 36 --seed 103
# Each attribute's region (where the generator can draw it on any face), for `--method regional`:
# `loramix compose mustache.safetensors:1#samples/regions/mustache.png … --method regional --prompt …`.
mkdir -p regions
python -c 'from loramix.toy.faces import attribute_region
for name in ("mustache", "lipstick", "glasses"): attribute_region(name).save(f"regions/{name}.png")'
