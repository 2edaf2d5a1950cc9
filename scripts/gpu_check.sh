#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA device (about 3-4 minutes):
#   1. the attention-equivalence tests on the GPU (compiled FlexAttention forward and backward,
#      SDPA causal, per-document SDPA and the dense mask, each against the float64 reference):
#      pytest tests/model/test_attention.py with LENGTHWISE_TEST_DEVICE=cuda.
#   2. a ~2-minute throughput benchmark of all five strategies at max length 8192 on CUDA
#      (bf16 autocast, peak memory from torch.cuda.max_memory_allocated), one table.
# Usage: bash scripts/gpu_check.sh  (PYTHON=... to choose the interpreter; default: the repo's
# .venv if its torch sees a GPU, else python3). Exit status: 0 all passed, 1 a check failed,
# 2 no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

has_cuda='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
if [[ -z "${PYTHON:-}" ]]; then  # the first of these whose torch sees a GPU, else the first
    candidates=()
    [[ -x .venv/bin/python ]] && candidates+=(.venv/bin/python)
    candidates+=(python3)
    PYTHON=${candidates[0]}
    for py in "${candidates[@]}"; do
        if "$py" -c "$has_cuda" 2>/dev/null; then PYTHON=$py; break; fi
    done
fi
if ! "$PYTHON" -c "$has_cuda" 2>/dev/null; then
    torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
    echo "gpu_check: no CUDA device visible to $PYTHON (torch $torch_version);" \
        "run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

status=0
echo "== 1/2 attention equivalence on CUDA (tests/model/test_attention.py)"
LENGTHWISE_TEST_DEVICE=cuda "$PYTHON" -m pytest tests/model/test_attention.py -m "gpu or not gpu" \
    -q -p no:cacheprovider || { echo "gpu_check: attention tests FAILED" >&2; status=1; }

echo "== 2/2 throughput, all strategies, max_len 8192, CUDA bf16"
timeout 600 "$PYTHON" benchmarks/throughput.py --device cuda --max-len 8192 \
    || { echo "gpu_check: throughput benchmark FAILED" >&2; status=1; }

exit "$status"
