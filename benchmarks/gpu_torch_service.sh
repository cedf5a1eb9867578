#!/usr/bin/env bash
# torch_service benchmark on a CUDA machine (issue 3's GPU figure).
#
# The GPU machine used here has no package registry and its own python3 (3.12) with a CUDA build of
# PyTorch, so what it lacks (benchmarks/gpu_wheels.txt, pins from requirements.lock) travels as wheels
# and the model repository travels pre-trained (cp -r model_repository .gpurepo). Fetch the wheels
# here, where the registry is reachable:
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .gpuwheels -r benchmarks/gpu_wheels.txt
#
# Usage, from the repository root on that machine (benchmarks/gpu_gateway_overhead.sh uses the same):
#
#     WHEELS=.gpuwheels REPO=.gpurepo OUT=/tmp/out bash benchmarks/gpu_torch_service.sh
set -euo pipefail
WHEELS=${WHEELS:-.gpuwheels}
REPO=${REPO:-.gpurepo}
OUT=${OUT:-/tmp/gpu-bench}
SITE=${SITE:-/tmp/torch-service-deps}
mkdir -p "$OUT"
# --no-deps: the wheels are the complete set the image lacks; the rest (numpy, uvloop, ...) is there.
python3 -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 - "$REPO" <<'PY'
import sys, torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0))
m = torch.jit.load(f"{sys.argv[1]}/torchscript/cnn/1/model.pt", map_location="cuda")
print("TorchScript artifact loads on cuda:", sorted(m(torch.rand(2, 28, 28, 1, device="cuda")).keys()))
PY
# CUDA first, then the same run on the machine's CPU cores as the in-run reference.
python3 benchmarks/torch_service_bench.py --device cuda --model-repository "$REPO" --repeats 3 --json "$OUT/cuda.json"
python3 benchmarks/torch_service_bench.py --device cpu --model-repository "$REPO" --repeats 3 --json "$OUT/cpu.json"
