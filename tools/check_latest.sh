#!/usr/bin/env bash
# The suite against today's releases: a new virtual environment, the newest release of every package in the
# requirements files (base, test and optional groups) except the pinned torch pair, then the whole suite.
#
#   bash tools/check_latest.sh            # check only (run it before you submit)
#   bash tools/check_latest.sh --lock     # and, when the suite passes, rewrite requirements-lock.txt from that environment
#
# VENV (default: a temporary folder) keeps the environment; PYTHON (default python3) makes it.
# A failure here is mended in the code, not by capping a version, unless the new release itself is broken
# (then the cap goes into the requirements file with a comment that says so).
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=0
[[ "${1:-}" == "--lock" ]] && LOCK=1
VENV="${VENV:-$(mktemp -d /tmp/usad-latest.XXXXXX)}"
PYTHON="${PYTHON:-python3}"
TORCH_PAIR=(torch==2.14.1 torchvision==0.29.1)
# every requirements file but the lock: ranges, read as "the newest release that fits"
mapfile -t REQS < <(ls requirements*.txt | grep -v '^requirements-lock.txt$')

echo "check_latest: new environment in $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet "${TORCH_PAIR[@]}"
# optional groups pin their versions (==); for this check they are read as lower bounds (>=), so that their
# newest releases are what gets tested
TMPREQ="$VENV/latest-requirements.txt"
for f in "${REQS[@]}"; do
  sed -E 's/^([A-Za-z0-9_.\[\],-]+)==/\1>=/' "$f"
done | grep -vE '^\s*(torch|torchvision)([<>=!~ ;]|$)' > "$TMPREQ"
"${PIP[@]}" install --quiet --upgrade --upgrade-strategy eager -r "$TMPREQ" "${TORCH_PAIR[@]}"
"${PIP[@]}" check
echo "check_latest: versions under test"
"${PIP[@]}" list --format=freeze | grep -iE '^(torch|torchvision|timm|numpy|scipy|scikit-learn|opencv|pytest|anomalib|lightning|ray|open.clip)' || true

# the README's test command, in that environment
set +e
CI="${CI:-}" "$VENV/bin/python" -m pytest -q -p no:cacheprovider
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "check_latest: the suite FAILED against today's releases (exit $rc); the environment is kept in $VENV" >&2
  exit $rc
fi
if [[ $LOCK -eq 1 ]]; then
  {
    echo "# The environment the whole suite passed in, made by: bash tools/check_latest.sh --lock ($(date -u +%Y-%m-%d), Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())'))"
    echo "# Install: pip install -r requirements-lock.txt   (requirements.txt keeps the ranges for your own environment)"
    echo "# torch/torchvision are the pinned pair; the nvidia-* wheels are the ones PyPI's x86_64 torch build pulls in."
    "${PIP[@]}" list --format=freeze --exclude pip --exclude setuptools --exclude wheel
  } > requirements-lock.txt.tmp
  mv requirements-lock.txt.tmp requirements-lock.txt
  echo "check_latest: wrote requirements-lock.txt"
fi
echo "check_latest: the suite passed against today's releases"
