#!/usr/bin/env bash
# Move the pins: install the NEWEST versions that setup.py allows into a throwaway venv (no
# constraints.txt), run the test suite without the linters there, and report what changed.
#
#   scripts/try-latest.sh                       newest allowed versions, then the tests
#   scripts/try-latest.sh transformers==5.23.0  the same with some packages held at a version
#                                               (e.g. the oldest release setup.py allows)
#   scripts/try-latest.sh --unbounded           past setup.py's upper bounds: the newest release
#                                               of every direct dependency (torch excepted), to
#                                               see what raising a bound would break
#   scripts/try-latest.sh --write               when green, rewrite constraints.txt from it
#
# It never touches .venv. VENV (default /tmp/drive-vlm-latest) is made anew on each run; TESTS
# (default test) picks the test paths.
set -euo pipefail
cd "$(dirname "$0")/.."

write=0
unbounded=0
held=()
for arg in "$@"; do
  case "$arg" in
    --write) write=1 ;;
    --unbounded) unbounded=1 ;;
    *) held+=("$arg") ;;
  esac
done
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/drive-vlm-latest}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch stays at the build this machine installs locally (CPU here, CUDA from PyPI elsewhere).
"$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q --upgrade -e ".[test,onnx,ros,lint]" "${held[@]}"
if [ "$unbounded" = 1 ]; then
  mapfile -t direct < <("$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import requires
for req in requires('drive_vlm_pruned') or []:
    name = re.match(r'[A-Za-z0-9_.\[\]-]+', req).group(0)
    if 'extra ==' not in req or any(f'"{e}"' in req for e in ('test', 'onnx')):
        if not name.startswith('torch'):
            print(name)
PY
)
  "$VENV/bin/python" -m pip install -q --upgrade "${direct[@]}" "${held[@]}"
fi
"$VENV/bin/python" -m pip freeze --exclude-editable | sed 's/+cpu$//' | sort > "$VENV/freeze.txt"
echo "try-latest: versions that differ from constraints.txt:"
grep -v '^#' constraints.txt | sort | diff - "$VENV/freeze.txt" | grep '^[<>]' || echo "  (none)"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 100))}
status=0
"$VENV/bin/python" -m pytest ${TESTS:-test} -q -m 'not linter' -p no:cacheprovider || status=$?
if [ "$status" -ne 0 ]; then
  echo "try-latest: the tests FAILED on the versions above; constraints.txt is unchanged." >&2
  exit "$status"
fi
echo "try-latest: green on the versions above."
if [ "$write" = 1 ]; then
  { sed -n '/^#/p' constraints.txt; cat "$VENV/freeze.txt"; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "try-latest: constraints.txt rewritten; raise setup.py's upper bounds to match, commit both."
fi
