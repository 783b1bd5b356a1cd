#!/usr/bin/env bash
# Regenerate benchmarks/RESULTS.md and benchmarks/results/results.json end to end: peer venvs (idempotent), then every
# figure in one run (benchmarks/compare.py). The full run takes ~30-45 min on 2 cores; --quick checks the wiring on a
# tiny subset in a few minutes (its numbers are marked as not real figures).
#
#   bash benchmarks/run_all.sh [--quick] [extra compare.py args, e.g. --skip scaling]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi
export HF_HUB_OFFLINE=1

PREPARED=${SEMID_PREPARED:-$(python -c 'from semid.io import cache_dir; print(cache_dir() / "prepared" / "ml-1m")')}
if [ ! -f "$PREPARED/items.parquet" ]; then
  echo "[run_all] no prepared ML-1M at $PREPARED; preparing it" >&2
  semid prepare --dataset ml-1m
fi

bash benchmarks/setup_peers.sh 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
for peer in deepctr_torch torch_rechub fuxictr; do
  [ -f "${PEER_VENVS:-/tmp/peer-venvs}/$peer/.semid-ok" ] || { echo "[run_all] peer venv $peer is not ready" >&2; exit 1; }
done

python -m benchmarks.compare --prepared "$PREPARED" "$@"
