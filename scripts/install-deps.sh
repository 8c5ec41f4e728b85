#!/usr/bin/env bash
# Installs everything mtok needs to build and test on a fresh Debian 12 machine.
# Debian packages for the C build (and clang for the fuzz targets); numpy from PyPI for the test
# oracles (tests/ref).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential cmake pkg-config python3 python3-pip
      libpcre2-dev libjansson-dev libxxhash-dev liburing-dev libhwloc-dev
      libcmocka-dev libcairo2-dev libopenmpi-dev openmpi-bin
      libcivetweb-dev   # mtok serve's HTTP server (serve/http.c)
      fio   # fio: the reference for mtok bench kv (docs/PERFORMANCE.md)
      # the fuzz targets (docs/FUZZING.md): clang with libFuzzer (libclang_rt.fuzzer is in
      # libclang-rt-dev, which clang only recommends), its OpenMP runtime, llvm-symbolizer for stacks
      clang libclang-rt-dev libomp-dev llvm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# numpy: the independent reference for the golden tests (never on the inference path).
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install --quiet numpy || python3 -m pip install --quiet --break-system-packages numpy
fi
# The CUDA backend needs the CUDA toolkit (nvcc, cudart, cuBLASLt; 12.0 or later), which the build
# machines have preinstalled in /usr/local/cuda: nothing to install here. Where it is absent, the
# default MTOK_CUDA=AUTO builds mtok without the backend (docs/GPU.md); say which case this is.
nvcc_bin="$(command -v nvcc 2>/dev/null || true)"
if [ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_bin=/usr/local/cuda/bin/nvcc; fi
if [ -n "$nvcc_bin" ]; then
  echo "install-deps: CUDA toolkit: $nvcc_bin ($("$nvcc_bin" --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'version unknown'))"
else
  echo "install-deps: no CUDA toolkit (nvcc): mtok builds without the CUDA backend"
fi
