#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Keep any DDS traffic of the demo on this machine, on a domain of its own.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 100))}
exec .venv/bin/drive-vlm demo "$@"
