#!/usr/bin/env bash
# Runs the whole test suite from nothing: creates .venv, installs lossprobe with every
# framework and tracker, then runs the core (PyTorch + trackers), TensorFlow and Paddle
# tests in separate pytest processes (TensorFlow then Paddle in one process segfaults).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ".[test]" "tensorflow-cpu" "paddlepaddle"

status=0
run() {  # run one pytest process; exit code 5 (no tests collected) is a failure
  local name=$1; shift
  echo "=== pytest: $name ==="
  set +e
  "$PY" -m pytest -q -p no:cacheprovider "$@"
  local rc=$?
  set -e
  if [ $rc -eq 5 ]; then echo "no tests ran in $name: failing"; rc=1; fi
  if [ $rc -ne 0 ]; then status=$rc; fi
}
run core tests --ignore=tests/tf --ignore=tests/paddle
[ -d tests/tf ] && ls tests/tf/test_*.py >/dev/null 2>&1 && run tensorflow tests/tf
[ -d tests/paddle ] && ls tests/paddle/test_*.py >/dev/null 2>&1 && run paddle tests/paddle
exit $status
