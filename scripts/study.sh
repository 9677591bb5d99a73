#!/usr/bin/env bash
# Set up and run the main job: the embedded default study (digits, local Ray, CPU is fine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/indistill-study "$@"
