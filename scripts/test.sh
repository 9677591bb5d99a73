#!/usr/bin/env bash
# Set up and run the whole test suite (the end-to-end Ray tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
