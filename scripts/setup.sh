#!/usr/bin/env bash
# Installs every Debian package longctx needs to build, test and benchmark, then builds it.
# Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config
      libopenblas-openmp-dev libgtest-dev libgmock-dev libbenchmark-dev
      libcli11-dev nlohmann-json3-dev libfmt-dev libsentencepiece-dev sentencepiece time python3
      libcpp-httplib-dev  # `longctx serve`
      gnuplot-nox jq  # gnuplot and jq: `longctx eval --plot` (scripts/plot_eval.sh)
      clang libclang-rt-14-dev libomp-dev  # libFuzzer and OpenMP for clang: scripts/fuzz.sh
      pybind11-dev python3-pybind11 python3-dev libdlpack-dev  # the Python package (docs/PYTHON.md)
      python3-torch python3-numpy python3-pytest)  # its tests, examples and benchmark; torch: the HF import test's twin

source scripts/apt_need.sh
need "${PKGS[@]}"

if [ "${1:-}" != "--no-build" ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j"$(nproc)"
  ln -sf "$PWD/build/longctx" "$PWD/longctx" 2>/dev/null || true
fi
