#!/usr/bin/env bash
# The main job: installs what is missing, builds, tokenises the King James Bible (Debian's
# bible-kjv) byte by byte, and trains a small GPT-2 on it, printing the loss and the validation
# loss, and writing an llm.c checkpoint to runs/kjv/model.bin.
# Usage: scripts/run.sh [steps]      (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
scripts/setup.sh build
mkdir -p data runs/kjv
if [ ! -f data/kjv_train.bin ]; then
  bible -f "Gen1:1-Rev22:21" > data/kjv.txt
  build/make_tokens data/kjv.txt data/kjv --val_fraction 0.05
fi
build/train_gpt2 data/kjv_train.bin data/kjv_val.bin --steps "$STEPS" --out runs/kjv/model.bin
