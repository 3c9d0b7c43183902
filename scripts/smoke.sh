#!/usr/bin/env bash
# A quick run of loramix's main jobs with the packages of one venv: `scripts/smoke.sh VENV/bin OUT`.
# `make check-latest` runs it on the newest releases pyproject.toml allows; it stops at the first failure.
set -euo pipefail
BIN=$1
OUT=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
step() { echo; echo "== $*"; }

step inspect
"$BIN/loramix" inspect "$HERE/samples/random-a.kohya.safetensors" "$HERE/samples/random-b.diffusers.safetensors" --base sd15
step exact compose
"$BIN/loramix" compose "$HERE/samples/random-a.kohya.safetensors:0.7" "$HERE/samples/random-b.diffusers.safetensors:0.5" \
    -o "$OUT/composed.safetensors"
step train 30 steps, UNet and text encoder, nf4
for lora in mustache lipstick; do
    "$BIN/loramix" train "$HERE/recipes/$lora.toml" --steps 30 --warmup-steps 5 --sample-every 0 --output "$OUT/$lora"
done
step fused compose render
"$BIN/loramix" compose "$OUT/mustache/mustache.safetensors:0.7" "$OUT/lipstick/lipstick.safetensors:0.7" \
    --prompt "a face with a mustache and lipstick" -n 4 --images "$OUT/composed-images"
step generate 8 images
"$BIN/loramix" generate --prompt "a face" -n 8 --seed 0 --lora "$OUT/mustache/mustache.safetensors:0.7" -o "$OUT/faces"
step edit with two LoRAs
"$BIN/loramix" edit "$OUT/mustache/mustache.safetensors:0.7" "$OUT/lipstick/lipstick.safetensors:0.7" \
    --prompt "a face" -o "$OUT/edit"
step "plain diffusers loads the toy base and a trained LoRA: the README's snippet, run by its test"
"$BIN/python" -m pytest -q -p no:cacheprovider "$HERE/tests/test_readme.py"
echo
echo "smoke: every job ran"
