#!/usr/bin/env bash
# Makes agents/models/digits.onnx and its test set again, in a pinned Python environment under
# .cache/ (from PyPI only). The result is committed; run this only to change the model.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.cache/train-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/train-requirements.txt
"$venv/bin/python" scripts/train-model.py agents/models
