#!/usr/bin/env bash
# Wheels for the borrowed GPU machine, which reaches no package registry. That machine has
# Python 3.12, a CUDA build of torch and the packages in GPU_HAS below; whatever else lengthwise's
# runtime dependencies (pyproject.toml [project].dependencies) need must travel with the working
# tree. This downloads exactly those (today: pydantic) with their own dependencies, for CPython
# 3.12 on manylinux x86_64, into the ignored folder wheels/gpu; scripts/gpu_check.sh installs
# them there. wheels/gpu is git-ignored: name it in the device run's `carry`.
# typing-extensions ships although torch brings one: its version on that machine is unknown
# (pydantic needs a recent one) and `pip install --target` ignores installed packages, so a set
# without it does not resolve (45 KB).
# Usage: bash scripts/gpu_wheels.sh [--list]  (--list: print the missing requirements, download
# nothing). PYTHON=... picks the interpreter that runs pip (any Python >= 3.11). Idempotent: the
# folder is rebuilt from a fresh download and replaced only when its set of wheels changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The GPU machine's packages (besides the standard library), in one place. torch is never shipped.
GPU_HAS="torch tokenizers safetensors pyyaml matplotlib tqdm tensorboard pytest hypothesis numpy"
DEST=wheels/gpu
PY=${PYTHON:-python3}

# pyproject's runtime requirements whose (PEP 503 normalised) name is not in GPU_HAS, one a line
missing_txt=$(GPU_HAS=$GPU_HAS "$PY" - <<'EOF'
import os, re, tomllib
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
has = {norm(n) for n in os.environ["GPU_HAS"].split()}
with open("pyproject.toml", "rb") as f:
    for req in tomllib.load(f)["project"]["dependencies"]:
        if norm(re.match(r"[A-Za-z0-9._-]+", req)[0]) not in has:
            print(req)
EOF
)
missing=()
[[ -n $missing_txt ]] && mapfile -t missing <<<"$missing_txt"
if [[ ${1:-} == --list ]]; then printf '%s\n' "${missing[@]}"; exit 0; fi
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "gpu_wheels: nothing missing; removing $DEST"; rm -rf "$DEST"; exit 0
fi

mkdir -p "$(dirname "$DEST")"
stage=$(mktemp -d "$(dirname "$DEST")/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
echo "gpu_wheels: downloading ${missing[*]} (with dependencies) for cp312 manylinux x86_64"
if ! "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "$stage" "${missing[@]}" >"$stage/log" 2>&1; then
    echo "gpu_wheels: pip download failed (registry unreachable or no cp312 wheel?):" >&2
    tail -n 5 "$stage/log" >&2
    exit 1
fi
rm "$stage/log"
# dependencies the GPU machine already has stay behind (pip downloads the whole closure)
for w in "$stage"/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr '_.' '--' | tr '[:upper:]' '[:lower:]')
    if [[ " $GPU_HAS " == *" $name "* ]]; then
        echo "gpu_wheels: skip $(basename "$w") (the GPU machine has $name)"; rm "$w"
    fi
done
if [[ -d $DEST ]] && diff -q <(ls "$DEST") <(ls "$stage") >/dev/null; then
    echo "gpu_wheels: $DEST up to date ($(ls "$DEST" | wc -l) wheels)"
else
    chmod 755 "$stage" && rm -rf "$DEST" && mv "$stage" "$DEST" && mkdir "$stage"  # trap: rm stage
    echo "gpu_wheels: wrote $DEST: $(cd "$DEST" && ls | tr '\n' ' ')"
fi
du -sh "$DEST" | sed 's/^/gpu_wheels: total /'
