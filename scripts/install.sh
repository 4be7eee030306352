#!/usr/bin/env bash
# Creates .venv/ in the repository root and installs everything sa2va_ros needs:
# torch + torchvision, Meta's sam2 (pure Python), transformers, onnxruntime, OpenCV,
# rosbags, the ROS 2 Kilted wheels, and the package itself (editable).
# Re-running it is fast: a step whose requirements are already met installs nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SA2VA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="$ROOT/requirements/lock.txt"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
CONSTRAINTS=(-c "$LOCK")

# 1. PyTorch first: sam2 builds against the installed torch (no build isolation).
"${PIP[@]}" install "${CONSTRAINTS[@]}" torch torchvision
# 2. Meta's sam2: pure Python, its optional CUDA extension skipped.
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 "${PIP[@]}" install "${CONSTRAINTS[@]}" --no-build-isolation "sam2==1.1.0"
fi
# 3. Everything else, pinned by the lock file, then the package itself.
"${PIP[@]}" install "${CONSTRAINTS[@]}" -r "$ROOT/requirements/dev.txt"
"${PIP[@]}" install "${CONSTRAINTS[@]}" --no-deps --no-build-isolation -e "$ROOT"
echo "[install] done: $VENV"
