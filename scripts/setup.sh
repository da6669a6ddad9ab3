#!/usr/bin/env bash
# Create or update .venv with torch and this package (editable) plus its extras, at the exact
# versions in constraints.txt (the ones the suite last ran green with). Safe to re-run: it only
# calls pip when this script, setup.py or constraints.txt changed since the last successful run.
#
#   TORCH_SPEC   what to pip-install for torch (default torch==2.13.0: the CPU build on our CPU
#                machines, the CUDA build from PyPI on a GPU workstation). On a Jetson, set it to
#                NVIDIA's JetPack wheel, or to "" to keep a torch you installed yourself.
#   PYTHON       interpreter for the venv (default python3; 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); drive_vlm_pruned needs Python 3.10+." >&2
  echo "       Run with PYTHON=python3.11 (or another 3.10+ interpreter)." >&2
  exit 1
}

# PyPI's ROS 2 wheels (extra 'ros') and ament linters (extra 'lint') only where no ROS is
# sourced: on top of a sourced ROS they would shadow its rclpy.
extras=test,onnx,convert,quant,distill
if [ -z "${ROS_DISTRO:-}" ]; then
  extras="$extras,ros,lint"
else
  echo "setup: ROS 2 '$ROS_DISTRO' is sourced; using its rclpy and ament linters."
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.drive-vlm-setup
want="$(cat scripts/setup.sh setup.py constraints.txt | sha256sum | cut -c1-16) $TORCH_SPEC $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing into .venv (torch: ${TORCH_SPEC:-kept as is}; extras: $extras)..."
# A torch of the user's own (TORCH_SPEC other than the default, e.g. NVIDIA's JetPack wheel)
# is not held to the torch pin; every other package is.
constraints=constraints.txt
if [ "$TORCH_SPEC" != "torch==2.13.0" ]; then
  constraints=.venv/constraints-without-torch.txt
  grep -v '^torch==' constraints.txt > "$constraints"
fi
# pip's own notices go to a log, shown only if an install fails.
log=.venv/setup.log
pip_quiet() {
  .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1 || {
    cat "$log" >&2
    echo "setup: pip install $* failed (log above, kept in $log)" >&2
    exit 1
  }
}
: >"$log"
pip_quiet --upgrade pip
if [ -n "$TORCH_SPEC" ]; then
  pip_quiet -c "$constraints" "$TORCH_SPEC"
fi
pip_quiet -c "$constraints" -e ".[$extras]"
echo "$want" > "$stamp"
