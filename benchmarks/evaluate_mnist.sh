#!/usr/bin/env bash
# Full-size four-defense evaluation on MNIST's held-out test split, Linf 0.3 (see benchmarks/README.md).
#   bash benchmarks/evaluate_mnist.sh runs/agdm-mnist [outputs/eval-mnist-linf]
# Budget through the environment: NUM_IMAGES STEPS RESTARTS TARGETED_RESTARTS EOT LOSS RESCORE_RUNS SEEDS ATTACKS
# SANITY_IMAGES CONVERGENCE_CHECKS PROCESSES NORM EPS EPS_GRID. Rerun the same command to resume an interrupted run.
set -euo pipefail
PIPELINE="${1:?usage: evaluate_mnist.sh PIPELINE [OUTPUT_DIR]}"
NORM="${NORM:-Linf}"
EPS="${EPS:-0.3}"
EPS_GRID="${EPS_GRID:-0.1 0.2 0.4}"
OUT="${2:-outputs/eval-mnist-$(echo "$NORM" | tr 'A-Z' 'a-z')}"
NUM_IMAGES="${NUM_IMAGES:-64}"
STEPS="${STEPS:-100}"                      # APGD iterations per run
RESTARTS="${RESTARTS:-1}"                  # untargeted APGD runs
TARGETED_RESTARTS="${TARGETED_RESTARTS:-0}" # APGD-T runs at the next most likely classes
EOT="${EOT:-1}"
LOSS="${LOSS:-margin}"
RESCORE_RUNS="${RESCORE_RUNS:-5}"          # K: robust only if clean-correct and correct in the K runs
SEEDS="${SEEDS:-0}"
ATTACKS="${ATTACKS:-apgd,apgd-guidance,bpda,surrogate}"   # add autoattack-rand,autoattack-standard on a GPU
SANITY_IMAGES="${SANITY_IMAGES:-64}"
CONVERGENCE_CHECKS="${CONVERGENCE_CHECKS:-steps}"          # budgets doubled: steps eot restarts
PROCESSES="${PROCESSES:-1}"

# shellcheck disable=SC2086
ARGS=(evaluate --pipeline "$PIPELINE" --split test --num_images "$NUM_IMAGES"
      --norm "$NORM" --eps "$EPS" --eps_grid $EPS_GRID --attacks "$ATTACKS"
      --steps "$STEPS" --restarts "$RESTARTS" --targeted_restarts "$TARGETED_RESTARTS" --eot_samples "$EOT"
      --loss "$LOSS" --rescore_runs "$RESCORE_RUNS" --seeds $SEEDS
      --sanity_images "$SANITY_IMAGES" --convergence_checks $CONVERGENCE_CHECKS --output_dir "$OUT")

if [ "$PROCESSES" -gt 1 ]; then
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" accelerate launch --multi_gpu --num_processes "$PROCESSES" \
        -m diffusers_agdm.cli "${ARGS[@]}"
else
    python -m diffusers_agdm.cli "${ARGS[@]}"   # the same as the `agdm` console script
fi
