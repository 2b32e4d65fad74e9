#!/usr/bin/env bash
# Refresh requirements.lock: resolve the newest versions inside pyproject.toml's ranges in a fresh venv, run the
# whole suite (ruff, then pytest with the doctests) on them, and only if it passes write the lock, atomically.
#
#   bash scripts/lock.sh          # about 5 minutes on 2 CPU cores; requirements.lock is left alone on failure
#
# The lock holds every installed package with its exact version, transitive ones included, as `pip freeze`
# gives them, for the Python that made it (its header says which). scripts/setup.sh installs from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=requirements.lock
work=$(mktemp -d "${TMPDIR:-/tmp}/nmtq-lock.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "lock.sh: resolving the newest versions inside pyproject.toml's ranges in $work/venv"
NMTQ_VENV="$work/venv" NMTQ_DEPS=latest PYTHON="$PYTHON" bash scripts/setup.sh
python_line=$("$work/venv/bin/python" -c 'import platform, sys
print("%d.%d (%s %s, %s %s)" % (*sys.version_info[:2], platform.python_implementation(), platform.python_version(),
                                platform.system(), platform.machine()))')
{
  echo "# python: $python_line"
  "$work/venv/bin/python" -m pip freeze --exclude-editable | LC_ALL=C sort -f
} > "$work/candidate"

echo "lock.sh: running the suite on them (tests/test_install.py checks the candidate lock against this venv)"
"$work/venv/bin/ruff" check .
set +e
NMTQ_LOCK="$work/candidate" "$work/venv/bin/python" -m pytest -p no:cacheprovider 2>&1 | tee "$work/pytest.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "lock.sh: the suite failed on the newest versions (pytest exit $status); $LOCK is unchanged. Fix the" \
       "failures, or narrow pyproject.toml's ranges, then run scripts/lock.sh again" >&2
  exit 1
fi
summary=$(grep -E '^[0-9]+ passed' "$work/pytest.log" | tail -1)
{
  echo "# requirements.lock: the exact version of every package nmtq's set-up installs, transitive ones included."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d) after the whole suite passed on them: $summary."
  echo "# bash scripts/setup.sh installs these; NMTQ_DEPS=latest bash scripts/setup.sh the newest in pyproject's ranges."
  cat "$work/candidate"
} > "$work/lock"
cp "$work/lock" "$LOCK.tmp" && mv "$LOCK.tmp" "$LOCK"
echo "lock.sh: wrote $LOCK ($(grep -vc '^#' "$LOCK") packages; transformers $(sed -n 's/^transformers==//p' "$LOCK"))"
