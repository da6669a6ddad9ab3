#!/usr/bin/env bash
# The full test suite: set up .venv if needed, then run pytest over test/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# DDS discovery stays on loopback, on a per-run domain, so parallel runs never cross-talk.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 100))}
exec .venv/bin/python -m pytest test "$@"
