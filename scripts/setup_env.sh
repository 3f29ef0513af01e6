#!/usr/bin/env bash
# Creates (or updates) the virtual environment that `make test` and `make bench` run in, installs
# what they need and builds detr_ops into it (editable install against the environment's torch).
#
# Where python3 can already import torch (a GPU machine with CUDA torch), the environment sees the
# system packages and keeps that torch; elsewhere it installs the CPU build, torch==2.13.0.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" 2>/dev/null; then
    echo "setup_env: using the torch that $python already has"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -r requirements-dev.txt
# lapx (a benchmark baseline) installs its module as `lap`, the name of the original lap: it goes to
# its own folder, from which benchmarks/lap_baselines.py imports it beside lap.
[ -d "$venv/lapx/lap" ] || "${pip[@]}" --no-deps --target "$venv/lapx" "lapx==0.11.1"
"${pip[@]}" --no-build-isolation -e .
"$venv/bin/python" -c "import detr_ops; print('setup_env: detr_ops', detr_ops.__version__, detr_ops.build_info())"
