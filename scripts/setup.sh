#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test and docs extras. One line per step; pip's
# output goes to .venv/setup.log, and its end is printed only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/setup.log

# step MESSAGE COMMAND...: print MESSAGE, run COMMAND with its output in the log; on failure, the log's end
step() {
    local message=$1
    shift
    echo "setup: $message"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "setup: failed: $message; the end of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
}

mkdir -p .venv
: >"$LOG"
if [ -x .venv/bin/python ]; then
    echo "setup: using the existing .venv"
else
    step "creating .venv" "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --upgrade pip >>"$LOG" 2>&1 || true  # a newer pip is nice, not needed (offline)
step "installing indistill-study, test and docs dependencies" .venv/bin/python -m pip install -e ".[test,docs]"
echo "setup: done"
