#!/usr/bin/env bash
# The sample training sets: 36 generated faces each, with captions and attribute masks, one folder per attribute.
set -euo pipefail
cd "$(dirname "$0")"
loramix faces mustache --mustache --masks --count 36 --seed 101
loramix faces lipstick --lipstick --masks --count 36 --seed 102
loramix faces glasses --glasses --masks --count 36 --seed 103
