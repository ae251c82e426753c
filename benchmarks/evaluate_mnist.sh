#!/usr/bin/env bash
# Full-size four-defense evaluation on MNIST's held-out test split, Linf 0.3 (see benchmarks/README.md).
#   bash benchmarks/evaluate_mnist.sh runs/agdm-mnist [outputs/eval-mnist-linf]
# Budget through the environment: NUM_IMAGES PGD_STEPS EOT SEEDS ATTACKS PROCESSES NORM EPS EPS_GRID.
set -euo pipefail
PIPELINE="${1:?usage: evaluate_mnist.sh PIPELINE [OUTPUT_DIR]}"
NORM="${NORM:-Linf}"
EPS="${EPS:-0.3}"
EPS_GRID="${EPS_GRID:-0.1 0.2 0.4}"
OUT="${2:-outputs/eval-mnist-$(echo "$NORM" | tr 'A-Z' 'a-z')}"
NUM_IMAGES="${NUM_IMAGES:-64}"
PGD_STEPS="${PGD_STEPS:-50}"
EOT="${EOT:-4}"
SEEDS="${SEEDS:-0 1}"
ATTACKS="${ATTACKS:-pgd,bpda,surrogate}"   # add autoattack-rand,autoattack-standard on a GPU
PROCESSES="${PROCESSES:-1}"

# shellcheck disable=SC2086
ARGS=(evaluate --pipeline "$PIPELINE" --dataset mnist --split test --num_images "$NUM_IMAGES"
      --norm "$NORM" --eps "$EPS" --eps_grid $EPS_GRID --attacks "$ATTACKS"
      --pgd_steps "$PGD_STEPS" --eot_samples "$EOT" --rescore_runs 3 --seeds $SEEDS
      --sanity_images 16 --sanity_steps 10 50 --sanity_eot 1 8 --output_dir "$OUT")

if [ "$PROCESSES" -gt 1 ]; then
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" accelerate launch --multi_gpu --num_processes "$PROCESSES" \
        -m diffusers_agdm.cli "${ARGS[@]}"
else
    python -m diffusers_agdm.cli "${ARGS[@]}"   # the same as the `agdm` console script
fi
