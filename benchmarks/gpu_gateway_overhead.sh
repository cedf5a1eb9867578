#!/usr/bin/env bash
# Gateway overhead in front of torch_service on a CUDA machine (issue 5's figure on a larger host).
#
# The GPU image has no TensorFlow and no package registry, so this measures the torch path only
# (`gateway_overhead.py --backends torch`): torch_service on the GPU, two gateways (binary and JSON wire), the byte-copying
# relay, each with cores of its own (16 there; the 2-vCPU development VM shares two between client,
# gateway and backend). The wheels and the model repository travel as for gpu_torch_service.sh (a
# repository with only its torchscript/ tree will do), and wrk with the libraries it links, made here:
#
#     mkdir -p .gputools/bin .gputools/lib .gputools/libexec && cp "$(command -v wrk)" .gputools/libexec/
#     cp -L $(ldd "$(command -v wrk)" | awk '/luajit|libssl|libcrypto/ {print $3}') .gputools/lib/
#     printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")/..\nLD_LIBRARY_PATH="$d/lib" exec "$d/libexec/wrk" "$@"\n' \
#         > .gputools/bin/wrk && chmod +x .gputools/bin/wrk
#
# Without it the script's own client is used. Usage, from the repository root on that machine:
#
#     WHEELS=.gpuwheels REPO=.gpurepo WRK_DIR=.gputools bash benchmarks/gpu_gateway_overhead.sh
set -uo pipefail
WHEELS=${WHEELS:-.gpuwheels}
REPO=${REPO:-.gpurepo}
WRK_DIR=${WRK_DIR:-.gputools}
SITE=${SITE:-/tmp/torch-service-deps}
python3 -m pip install -q --no-index --no-deps --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
case "$WRK_DIR" in /*) ;; *) WRK_DIR=$PWD/$WRK_DIR ;; esac
export PATH=$WRK_DIR/bin:$PATH
case "$(wrk --version 2>&1)" in wrk*) client=wrk ;; *) client=python ;; esac  # (it exits 1 when it works)
echo "client: $client; $(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
rc=0
# SIGTERM from timeout reaches the script, which then stops the services it started (-k: if it hangs).
bench() { timeout -k 30 200 python3 benchmarks/gateway_overhead.py --backends torch --model-repository "$REPO" "$@" || rc=1; }
# 1. torch_service on CUDA, wrk (or this script's client), concurrency 1 and 64.
bench --torch-device cuda --client "$client" --wrk-duration 2 --rounds 5 --concurrency 1,64 --requests 1000
# 2. The same at concurrency 1 with the script's own client (the one the CPU figures also quote).
bench --torch-device cuda --client python --rounds 5 --requests 1000 --concurrency 1
# 3. torch_service on the CPU cores, wrk at concurrency 1: the development VM's set-up on a larger host.
bench --torch-device cpu --client "$client" --wrk-duration 2 --rounds 5 --concurrency 1 --requests 1000
exit $rc
