#!/usr/bin/env bash
# The MNIST evaluation at L2 eps 2.0 (a guidance network trained against Linf, attacked in L2).
#   bash benchmarks/evaluate_mnist_l2.sh runs/agdm-mnist [outputs/eval-mnist-l2]
set -euo pipefail
NORM=L2 EPS="${EPS:-2.0}" EPS_GRID="${EPS_GRID:-0.5 1.0 3.0}" exec bash "$(dirname "$0")/evaluate_mnist.sh" "$@"
