#!/usr/bin/env bash
# The main job from nothing: creates .venv, installs lossprobe, trains a healthy and a faulty
# model side by side and prints the diagnosis (publishing to a local MLflow store and an
# offline W&B run under ./lossprobe-demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ".[all,test]"
exec "$PY" -m lossprobe.cli demo "$@"
