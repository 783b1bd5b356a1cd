#!/usr/bin/env bash
# Create one throw-away venv per peer toolkit under /tmp/peer-venvs/<name> (idempotent), never touching the project
# venv. torch is installed FIRST and pinned to the project's CPU build so that a peer's unpinned `torch` requirement
# is already satisfied (an unpinned torch pulls GBs of CUDA wheels).
#
#   bash benchmarks/setup_peers.sh [name ...]     # names: deepctr_torch torch_rechub fuxictr (default: all)
set -euo pipefail

ROOT=${PEER_VENVS:-/tmp/peer-venvs}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
PY=${PYTHON:-python3}

declare -A PEER=(
  [deepctr_torch]="deepctr-torch==0.3.0"
  [torch_rechub]="torch-rechub==0.9.0"
  [fuxictr]="fuxictr==2.3.10"
)
# extra runtime deps the run scripts need (pyarrow: parquet in/out; requests: deepctr_torch imports it at start-up).
# fuxictr brings polars and ray[data] itself; its run script feeds it parquet with genre pre-joined by "^" because
# its List-column path breaks on polars 2.x.
declare -A EXTRA=(
  [deepctr_torch]="pandas pyarrow scikit-learn requests"
  [torch_rechub]="pandas pyarrow scikit-learn"
  [fuxictr]="pandas pyarrow scikit-learn"
)

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(deepctr_torch torch_rechub fuxictr)

for name in "${names[@]}"; do
  spec=${PEER[$name]:?unknown peer $name (known: ${!PEER[*]})}
  venv=$ROOT/$name
  if [ -x "$venv/bin/python" ] && [ -f "$venv/.semid-ok" ] && [ "$(cat "$venv/.semid-ok")" = "$spec $TORCH_PIN ${EXTRA[$name]}" ]; then
    echo "[$name] ready: $venv"
    continue
  fi
  echo "[$name] creating $venv"
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # pip's find-links on this machine hold the 2.13.0+cpu wheel, which sorts above PyPI's CUDA build of 2.13.0
  "$venv/bin/pip" install -q "$TORCH_PIN"
  "$venv/bin/python" -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ else 'got torch ' + torch.__version__ + ', expected a +cpu build')"
  "$venv/bin/pip" install -q "$spec" ${EXTRA[$name]} "$TORCH_PIN"
  "$venv/bin/python" -c "import torch; print('[$name] torch', torch.__version__)"
  echo "$spec $TORCH_PIN ${EXTRA[$name]}" > "$venv/.semid-ok"
  echo "[$name] ready: $venv"
done
