#!/usr/bin/env bash
# Every command's output and every file it writes, as one list of SHA-256 digests: `scripts/digest_outputs.sh
# VENV/bin OUT > digests.txt`. Run it before and after a change that should alter no behaviour (a refactor), in
# the same venv, and diff the two lists. Timings and absolute paths are masked out of the printed text.
set -euo pipefail
BIN=$(cd "$1" && pwd)
mkdir -p "$2"; OUT=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$OUT"; mkdir -p "$OUT/logs"
cd "$OUT"
n=0
run() {  # run NAME ARGS...: one loramix command, its stdout and stderr kept, its exit status recorded
    local name=$1; shift
    n=$((n + 1))
    set +e
    "$BIN/loramix" "$@" > "logs/$name.out" 2> "logs/$name.err"
    echo "exit $?" >> "logs/$name.out"
    set -e
}
S=$HERE/samples
run inspect inspect "$S/random-a.kohya.safetensors" "$S/random-b.diffusers.safetensors" --base sd15
run inspect-json inspect "$S/random-a.kohya.safetensors" --json
run compose-exact compose "$S/random-a.kohya.safetensors:0.7" "$S/random-b.diffusers.safetensors:0.5" -o composed.safetensors
run compose-rank compose "$S/random-a.kohya.safetensors:0.7" "$S/random-b.diffusers.safetensors:0.5" --rank 4 \
    --format kohya -o composed-rank4.kohya.safetensors
for m in merge-svd ties dare dare_ties; do
    run "compose-$m" compose "$S/random-a.kohya.safetensors:0.7" "$S/random-b.diffusers.safetensors:0.5" \
        --method $m --seed 3 -o "composed-$m.safetensors"
done
run compose-full compose "$S/random-a.kohya.safetensors:0.7" "$S/random-b.diffusers.safetensors:0.5" \
    --format full-diff --dtype fp16 -o composed-full.safetensors
run compose-missing compose missing.safetensors -o x.safetensors
run faces faces -n 6 --seed 1 --mustache --masks faces
run train-mustache train "$HERE/recipes/mustache.toml" --steps 12 --warmup-steps 2 --sample-every 6 \
    --checkpoint-every 6 --output mustache
run train-lipstick train "$HERE/recipes/lipstick.toml" --steps 8 --warmup-steps 2 --no-final-samples \
    --quantize none --output lipstick
M=mustache/mustache.safetensors
L=lipstick/lipstick.safetensors
run generate generate --prompt "a face" -n 3 --seed 0 --steps 6 -o gen
run generate-lora generate --prompt "a face with a mustache" -n 2 --seed 5 --steps 6 --lora "$M:0.8" -o gen-lora
printf 'a face\na face with lipstick\n' > prompts.txt
run generate-file generate --prompts prompts.txt -n 2 --steps 5 --lora "$L:0.5@0.3-1" -o gen-file
for m in exact merge-svd switch composite regional; do
    run "render-$m" compose "$M:0.7" "$L:0.7" --method $m --prompt "a face with a mustache and lipstick" -n 2 \
        --steps 6 --images "render-$m"
done
run render-sequential compose "$M:0.7" "$L:0.7" --sequential --prompt "a face" -n 2 --steps 6 --images render-seq
run render-nf4 compose "$M:0.7" "$L:0.7" --quantize nf4 --prompt "a face" -n 2 --steps 6 --images render-nf4
run edit edit "$M:0.7" "$L:0.7" --prompt "a face" --steps 6 -o edit
run xy xy --x "$M" --y "$L" --x-weights 0,1 --y-weights 0,1 --prompt "a face" --steps 5 -o xy.png
run resize resize "$M" --rank 4 -o resized.safetensors
run resize-dyn resize "$M" --dynamic sv_fro --dynamic-param 0.9 --verbose -o resized-dyn.safetensors
run bake bake "$HERE/loramix/weights/toy" "$M:0.8" -o baked
run extract extract baked "$HERE/loramix/weights/toy" --rank 4 -o extracted.safetensors
run judge judge gen
run judge-json judge faces --json
cd "$OUT"
# Masks: the run's own folder and the source tree, durations, rates and memory peaks, which change run to run.
find . -type f \( -path './logs/*' -o -name '*.jsonl' -o -name '*.json' \) -print0 | xargs -0 sed -i -E \
    -e "s#$OUT#OUT#g" -e "s#$HERE#HERE#g" \
    -e 's/"(seconds|peak_rss_gib)": [0-9.e-]+/"\1": T/g' \
    -e 's/[0-9]+([.][0-9]+)? ?[a-z]+\/(s|it)\b/T/g' \
    -e 's/[0-9]+([.][0-9]+)? ?(s|ms|min)\b/T\2/g' \
    -e 's/[0-9]+:[0-9]{2}(:[0-9]{2})?/T/g'
# Progress bars redraw as often as time allows: only the text outside them counts.
for f in logs/*.err; do tr '\r' '\n' < "$f" | grep -v '%|' > "$f.text" || true; mv "$f.text" "$f"; done
# safetensors writes a header's metadata in no fixed order (a Rust hash map), so a file is digested as its
# header with sorted keys, then its data; JSON output likewise with sorted keys.
"$BIN/python" - <<'PY'
import hashlib, json, pathlib, struct

def canonical(path):
    data = path.read_bytes()
    if path.suffix == ".safetensors" and len(data) >= 8:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + size])
        return json.dumps(header, sort_keys=True).encode() + data[8 + size:]
    if path.suffix in (".json", ".jsonl", ".out"):
        lines = []
        for line in data.decode().splitlines():
            try:
                lines.append(json.dumps(json.loads(line), sort_keys=True))
            except ValueError:
                lines.append(line)
        head, exit_line, status = data.decode().rpartition("exit ")  # a command's log ends with its exit status
        try:
            return (json.dumps(json.loads(head), sort_keys=True) + exit_line + status).encode()
        except ValueError:
            return "\n".join(lines).encode()
    return data

for path in sorted(p for p in pathlib.Path(".").rglob("*") if p.is_file() and p.suffix != ".tmp"):
    print(hashlib.sha256(canonical(path)).hexdigest(), f"./{path}")
PY
