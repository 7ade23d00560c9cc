#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, transformers, peft, safetensors, click, pytest; no network),
# downloaded here into .whl/ (git-ignored) to travel with the working tree. There, before the check:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 scripts/gpu_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 bitsandbytes==0.50.2 sqlite-utils sqlite-fts4 click-default-group tabulate python-dateutil pluggy
