#!/usr/bin/env bash
# The whole headline campaign (benchmarks/campaign.py: convergence study, table at the plateau, render) on one
# CUDA GPU (H200-class). Same stages, same resumable store under benchmarks/results/campaign/; rerun it to continue.
# --batch_size 64 fills the GPU better; results depend on the batch size, so this starts its own progress store
# beside a CPU run's (batch 16): pass --batch_size 16 to continue a store the CPU started.
#   bash benchmarks/campaign_gpu.sh            (extra flags are passed on, e.g. --seed 1)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'campaign_gpu.sh: no CUDA device')"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
python benchmarks/campaign.py --estimate --device cuda --batch_size 64 "$@"
time python benchmarks/campaign.py --device cuda --batch_size 64 "$@"
