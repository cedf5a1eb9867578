#!/usr/bin/env bash
# torch_service benchmark on a CUDA machine (issue 3's GPU figure).
#
# The GPU machine used here has no package registry and its own python3 with a CUDA build of
# PyTorch, so the server's pure-Python dependencies travel as wheels (built for its Python with
# `pip download --only-binary=:all: --python-version 3.12 ...` from requirements.lock pins) and
# the model repository travels pre-trained. Usage, from the repository root on that machine:
#
#     WHEELS=.gpuwheels REPO=.gpurepo OUT=/tmp/out bash benchmarks/gpu_torch_service.sh
set -euo pipefail
WHEELS=${WHEELS:-.gpuwheels}
REPO=${REPO:-.gpurepo}
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --find-links "$WHEELS" --target /tmp/torch-service-deps "$WHEELS"/*.whl
export PYTHONPATH=/tmp/torch-service-deps:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 - "$REPO" <<'PY'
import sys, torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0))
m = torch.jit.load(f"{sys.argv[1]}/torchscript/cnn/1/model.pt", map_location="cuda")
print("TorchScript artifact loads on cuda:", sorted(m(torch.rand(2, 28, 28, 1, device="cuda")).keys()))
PY
# CUDA first, then the same run on the machine's CPU cores as the in-run reference.
python3 benchmarks/torch_service_bench.py --device cuda --model-repository "$REPO" --repeats 3 --json "$OUT/cuda.json" \
  | tee "$OUT/cuda.txt"
python3 benchmarks/torch_service_bench.py --device cpu --model-repository "$REPO" --repeats 3 --json "$OUT/cpu.json" \
  | tee "$OUT/cpu.txt"
