#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA device (about 5-7 minutes on an H100; each step
# has a time budget, 9.5 minutes at worst in all, under the 10-minute limit of one device call):
#   1. the attention-equivalence tests on the GPU (compiled FlexAttention forward and backward,
#      SDPA causal, per-document SDPA and the dense mask, each against the float64 reference):
#      pytest tests/model/test_attention.py with LENGTHWISE_TEST_DEVICE=cuda.
#   2. the other model tests (GPT, KV cache, positions, the chunked LM loss) and the import
#      floors under that machine's torch build: they run on its CPU, in seconds, and catch
#      torch-version drift.
#   3. FlexAttention vs per-document SDPA vs the dense mask on document-masked rows of 8192
#      tokens, bf16, forward + backward (benchmarks/attention_backends.py).
#   4. the chunked LM loss vs full logits on CUDA: time and peak memory (benchmarks/lm_loss.py).
#   5. the throughput table at max length 8192, bf16 autocast, eager (chunked loss) and
#      full_logits rows side by side, peak memory from torch.cuda.max_memory_allocated.
# The borrowed GPU machine has torch but not pydantic and reaches no registry: run
# `bash scripts/gpu_wheels.sh` (make gpu-wheels) here first, and name wheels/gpu in the device
# run's carry (it is git-ignored, so it does not travel otherwise). When `import pydantic` fails,
# this installs those wheels into a temporary folder put first on PYTHONPATH (removed on exit).
# Usage: bash scripts/gpu_check.sh [--deps-only]  (--deps-only: pick the interpreter and make
# pydantic importable, nothing else; no GPU needed). PYTHON=... chooses the interpreter; default:
# the first python3 on PATH whose torch sees a GPU, never the repo's CPU-only .venv.
# GPU_WHEELS=... overrides wheels/gpu; GPU_CHECK_FORCE_WHEELS=1 installs them even when pydantic
# imports (to test that path). Exit status: 0 all passed, 1 a check failed, 2 no CUDA device or
# no wheels for a missing pydantic.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
wheels=${GPU_WHEELS:-wheels/gpu}

has_cuda='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
if [[ -z "${PYTHON:-}" ]]; then  # the first python3 on PATH whose torch sees a GPU, else the first
    for py in $(type -ap python3); do
        [[ $(cd "$(dirname "$py")/.." && pwd -P) == "$(pwd -P)/.venv" ]] && continue  # CPU-only
        PYTHON=${PYTHON:-$py}
        if "$py" -c "$has_cuda" 2>/dev/null; then PYTHON=$py; break; fi
    done
    PYTHON=${PYTHON:-python3}
fi

ensure_deps() {  # pydantic importable by $PYTHON, from $wheels if need be; says which
    if [[ -n ${GPU_CHECK_FORCE_WHEELS:-} ]] || ! "$PYTHON" -c 'import pydantic' 2>/dev/null; then
        if ! compgen -G "$wheels/*.whl" >/dev/null; then
            echo "gpu_check: pydantic needs installing and $wheels holds no wheels: run" \
                "'bash scripts/gpu_wheels.sh' on a machine with a registry, carry $wheels here" >&2
            exit 2
        fi
        deps=$(mktemp -d)
        trap 'rm -rf "$deps"' EXIT
        echo "gpu_check: installing $(ls "$wheels" | wc -l) wheels from $wheels into $deps"
        # --no-deps: the folder is the whole set (what this machine has was left out of it)
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$PYTHON" -m pip install -q --no-index --no-deps --target "$deps" "$wheels"/*.whl \
            || { echo "gpu_check: installing the wheels from $wheels FAILED" >&2; exit 1; }
        export PYTHONPATH="$deps:$PYTHONPATH"
    fi
    "$PYTHON" -c 'import pydantic as p; print(f"gpu_check: pydantic {p.VERSION}, {p.__file__}")' \
        || { echo "gpu_check: pydantic does not import" >&2; exit 1; }
}

if [[ ${1:-} == --deps-only ]]; then ensure_deps; exit 0; fi
if ! "$PYTHON" -c "$has_cuda" 2>/dev/null; then
    torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
    echo "gpu_check: no CUDA device visible to $PYTHON (torch $torch_version);" \
        "run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
ensure_deps
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

status=0
pytest=(-m pytest -q -p no:cacheprovider)
echo "== 1/5 attention equivalence on CUDA (tests/model/test_attention.py)"
LENGTHWISE_TEST_DEVICE=cuda timeout 150 "$PYTHON" "${pytest[@]}" tests/model/test_attention.py \
    -m "gpu or not gpu" || { echo "gpu_check: attention tests FAILED" >&2; status=1; }

echo "== 2/5 model tests and import floors under this torch (CPU)"
timeout 60 "$PYTHON" "${pytest[@]}" tests/model tests/test_layers.py \
    --ignore tests/model/test_attention.py \
    || { echo "gpu_check: model tests FAILED" >&2; status=1; }

echo "== 3/5 attention backends on document-masked rows, T 8192, CUDA bf16"
timeout 60 "$PYTHON" benchmarks/attention_backends.py --device cuda --seq-len 8192 --docs 1 8 64 \
    || { echo "gpu_check: attention backends benchmark FAILED" >&2; status=1; }

echo "== 4/5 chunked LM loss vs full logits on CUDA"
timeout 45 "$PYTHON" benchmarks/lm_loss.py --device cuda --quick \
    || { echo "gpu_check: LM loss benchmark FAILED" >&2; status=1; }

echo "== 5/5 throughput, max_len 8192, CUDA bf16, chunked loss and full logits"
timeout 240 "$PYTHON" benchmarks/throughput.py --device cuda --max-len 8192 --repeats 3 \
    --strategies concat_chunk concat_chunk_docmask best_fit decomposition \
    --modes eager full_logits \
    || { echo "gpu_check: throughput benchmark FAILED" >&2; status=1; }

exit "$status"
