#!/usr/bin/env bash
# Installs the Debian packages memtrain needs (only those missing) and configures + builds it.
# Usage: scripts/setup.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

PKGS=(build-essential cmake ninja-build pkg-config git
      libopenblas-openmp-dev libabsl-dev libprotobuf-dev protobuf-compiler
      libopenmpi-dev openmpi-bin zlib1g-dev liburing-dev nlohmann-json3-dev
      libgtest-dev libgmock-dev libbenchmark-dev
      bible-kjv fortunes gnuplot-nox dataset-fashion-mnist)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "memtrain setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
