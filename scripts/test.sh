#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
# Usage: scripts/test.sh        (from anywhere; uses ./build)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
# Tests pin nothing: each test sets the threads it needs; 2 parallel test jobs on 2 cores.
ctest --test-dir build --output-on-failure -j 2
