"""
Gradient evaluations per CPU-second: the cost of every honest robustness number. One gradient evaluation is one EOT
draw of the exact gradient through the whole defense, for one image. Compares, in the same process, EOT draws sent
one call at a time (the baseline) with draws batched into one call (`eot_batch`), for unguided and latent-guided
purification of the embedded default.

    OMP_NUM_THREADS=1 python benchmarks/gradient_throughput.py
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402
from diffusers_agdm.attacks import AttackObjective  # noqa: E402
from diffusers_agdm.data import load_labelled_images  # noqa: E402
from diffusers_agdm.evaluation import defense_specs  # noqa: E402


def measure(objective: AttackObjective, images, labels, repeats: int) -> float:
    """Image-gradient evaluations per CPU-second (median of `repeats` timed calls after one warm-up)."""
    objective(images, labels)
    rates = []
    for _ in range(repeats):
        began = time.process_time()
        objective(images, labels)
        rates.append(images.shape[0] * objective.eot_samples / (time.process_time() - began))
    return sorted(rates)[len(rates) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--num_images", type=int, default=16)
    parser.add_argument("--eot_samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.num_images, args.eot_samples, args.repeats) < 1:
        parser.error("--num_images, --eot_samples and --repeats must be >= 1")
    started = time.time()
    torch.manual_seed(args.seed)
    pipe = load(args.pipeline)
    for component in (pipe.unet, pipe.guidance, pipe.classifier):
        component.eval().requires_grad_(False)
    data = load_labelled_images("mnist", "test")
    images, labels = data.images[:args.num_images], data.labels[:args.num_images]
    rows, numbers = [], {}
    for guidance in ("none", "latent"):
        model = defense_specs(pipe, (guidance,))[0].build(pipe, args.seed)
        one_by_one = measure(AttackObjective(model, "margin", args.eot_samples, eot_batch=1), images, labels,
                             args.repeats)
        batched = measure(AttackObjective(model, "margin", args.eot_samples), images, labels, args.repeats)
        numbers[guidance] = {"one_call_per_draw": one_by_one, "batched": batched, "ratio": batched / one_by_one}
        rows.append([guidance, f"{one_by_one:.2f}", f"{batched:.2f}", f"{batched / one_by_one:.2f}x"])
    print(markdown_table(["defense", "EOT draws one call each (grad-evals / CPU-s)", "batched", "ratio"], rows))
    write_results("gradient_throughput", vars(args), numbers, started)


if __name__ == "__main__":
    main()
