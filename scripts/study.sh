#!/usr/bin/env bash
# Set up and run the main job. With no arguments: `indistill-study run`, the embedded default study
# (digits, local Ray, CPU is fine); otherwise the arguments go to indistill-study as they are
# (`bash scripts/study.sh run --help`, `bash scripts/study.sh table studies/default`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ "$#" -gt 0 ] || set -- run
exec .venv/bin/indistill-study "$@"
