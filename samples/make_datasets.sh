#!/usr/bin/env bash
# The sample training sets: 36 generated faces each, with captions, one folder per attribute.
set -euo pipefail
cd "$(dirname "$0")"
loramix faces mustache --mustache --count 36 --seed 101
loramix faces lipstick --lipstick --count 36 --seed 102
loramix faces glasses --glasses --count 36 --seed 103
