#!/usr/bin/env bash
# Installs everything mtok needs to build and test on a fresh Debian 12 machine.
# Debian packages for the C build (and clang for the fuzz targets), and Debian's numpy for the test
# oracles (tests/ref); pip only where python3 is not Debian's own (a pyenv or venv python).
# Installing packages needs root: run it as root, or as a user with sudo. A fresh Debian has no sudo;
# then the script says what to do instead of failing on "sudo: command not found".
set -euo pipefail
SUDO=""
no_sudo=0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else no_sudo=1; fi
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential cmake pkg-config python3 python3-pip
      libpcre2-dev libjansson-dev libxxhash-dev liburing-dev libhwloc-dev
      libcmocka-dev libcairo2-dev libopenmpi-dev openmpi-bin
      libcivetweb-dev   # mtok serve's HTTP server (serve/http.c)
      fio   # fio: the reference for mtok bench kv (docs/PERFORMANCE.md)
      # the test oracles (tests/ref): Debian's numpy, so no pip run is needed on Debian's python3
      python3-numpy
      # mtok eval's LongBench scoring (eval/): jieba's dictionary and segmenter for the Chinese
      # datasets, ICU for Unicode-aware case folding and matching
      python3-jieba libicu-dev
      # ChatGLM3's tokenizer.model (core/tok_spm.cc): the SentencePiece library
      libsentencepiece-dev
      # GLM-4V's image input (core/image.c): PNG and JPEG decoders (libjpeg-turbo)
      libpng-dev libjpeg62-turbo-dev
      # the fuzz targets (docs/FUZZING.md): clang with libFuzzer (libclang_rt.fuzzer is in
      # libclang-rt-dev, which clang only recommends), its OpenMP runtime, llvm-symbolizer for stacks
      clang libclang-rt-dev libomp-dev llvm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$no_sudo" -eq 1 ]; then
    cat >&2 <<MSG
install-deps: these Debian packages are missing: ${missing[*]}
install-deps: installing them needs root, and this system has no sudo (a fresh Debian has none). Either
  - run this script as root:   su -c 'bash scripts/install-deps.sh'
  - or, as root, install sudo and give yourself the right to use it, then log in again and rerun:
      su -c 'apt-get install -y sudo && adduser $(id -un) sudo'
MSG
    exit 1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# numpy: the independent reference for the golden tests (never on the inference path). Debian's
# python3-numpy above serves Debian's python3; another python3 first on PATH gets it from pip, quietly
# (pip refuses a Debian-managed python with "externally-managed-environment" unless told otherwise).
if ! python3 -c 'import numpy' 2>/dev/null; then
  python3 -m pip install --quiet numpy 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages numpy ||
    echo "install-deps: numpy is missing for $(command -v python3): the numeric tests will be skipped" >&2
fi
# The server tests' clients (openai, lm-evaluation-harness without torch) and LongBench's metric
# packages for the eval tests' reference scores: scripts/install-test-clients.sh says what and why.
bash "$(dirname "$0")/install-test-clients.sh" python3
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
