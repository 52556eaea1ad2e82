# Shared by scripts/*.sh: a project-local virtualenv in .venv with the given requirements.
# torch is pinned to 2.13.0 (the CPU build on this machine's disk; a plain "torch" pulls CUDA).
ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$PY" -m pip install -q "torch==2.13.0" -e "$@" 2>&1 | grep -v "is ignored: it is neither" || true
  "$PY" -c "import lossprobe, torch" >/dev/null
}
