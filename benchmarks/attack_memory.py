"""Memory of the exact-gradient attack: peak memory of one PGD gradient (through purification, the guidance
gradient and the classifier) against the number of reverse steps, with and without per-step gradient checkpointing,
and the time checkpointing costs. Target: with checkpointing, the peak at 50 steps is at most 1.5x the peak at 5.

Each configuration runs in a fresh subprocess so its peak is its own: on CPU the peak resident memory
(ru_maxrss) above the process's level just before the gradient; on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/attack_memory.py                  # the embedded default, steps 5 10 20 50
    python benchmarks/attack_memory.py --steps 5 50 --batch_size 32
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, markdown_table, write_results  # noqa: E402


def measure(args) -> dict:
    """One gradient in this process; prints a JSON line."""
    pipe = load(args.pipeline)
    cfg = pipe.unet.config
    size = pipe.sample_size
    x = torch.rand(args.batch_size, cfg.in_channels, size, size,
                   generator=torch.Generator().manual_seed(0)).to(pipe.device).requires_grad_(True)
    labels = torch.zeros(args.batch_size, dtype=torch.long, device=pipe.device)

    def gradient():
        purified = pipe.purify(x, num_inference_steps=args.worker_steps, guidance="latent",
                               generator=torch.Generator().manual_seed(0),
                               gradient_checkpointing=args.worker_checkpointing)
        loss = torch.nn.functional.cross_entropy(pipe.classifier_logits(purified), labels)
        return torch.autograd.grad(loss, x)[0]

    with torch.no_grad():  # warm-up allocations that every configuration has
        pipe.purify(x, num_inference_steps=1, guidance="latent", generator=torch.Generator().manual_seed(0))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    grad = gradient()
    seconds = time.perf_counter() - start
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"steps": args.worker_steps, "checkpointing": args.worker_checkpointing, "peak_bytes": peak,
                      "seconds": seconds, "grad_abs_sum": grad.abs().sum().item()}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--worker_steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_steps is not None:
        args.worker_checkpointing = bool(args.worker_checkpointing)
        return measure(args)

    started = time.time()
    results = []
    for checkpointing in (False, True):
        for steps in args.steps:
            command = [sys.executable, __file__, "--batch_size", str(args.batch_size), "--worker_steps", str(steps),
                       "--worker_checkpointing", str(int(checkpointing))]
            if args.pipeline:
                command += ["--pipeline", args.pipeline]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(row)
            print(f"steps {steps:3d}  checkpointing {checkpointing!s:5s}  peak {row['peak_bytes'] / 2**20:8.1f} MiB"
                  f"  {row['seconds']:.2f} s", flush=True)
    by = {(r["steps"], r["checkpointing"]): r for r in results}
    lo, hi = min(args.steps), max(args.steps)
    rows = []
    for steps in args.steps:
        plain, ckpt = by[(steps, False)], by[(steps, True)]
        rows.append([steps, f"{plain['peak_bytes'] / 2**20:.1f}", f"{ckpt['peak_bytes'] / 2**20:.1f}",
                     f"{ckpt['seconds'] / plain['seconds']:.2f}x",
                     f"{abs(ckpt['grad_abs_sum'] - plain['grad_abs_sum']) / max(plain['grad_abs_sum'], 1e-12):.1e}"])
    print("\n" + markdown_table(["reverse steps", "peak MiB, plain", "peak MiB, checkpointed",
                                 "time, checkpointed / plain", "gradient rel. diff"], rows))
    growth_ckpt = by[(hi, True)]["peak_bytes"] / max(by[(lo, True)]["peak_bytes"], 1)
    growth_plain = by[(hi, False)]["peak_bytes"] / max(by[(lo, False)]["peak_bytes"], 1)
    print(f"\npeak at {hi} steps / peak at {lo} steps: checkpointed {growth_ckpt:.2f}x "
          f"(target <= 1.5x: {'met' if growth_ckpt <= 1.5 else 'NOT met'}), plain {growth_plain:.2f}x")
    write_results("attack_memory", {"pipeline": args.pipeline or "embedded default", "steps": args.steps,
                                    "batch_size": args.batch_size, "guidance": "latent",
                                    "measure": "CUDA max_memory_allocated" if torch.cuda.is_available()
                                    else "CPU peak RSS (ru_maxrss) above the pre-gradient level, fresh process"},
                  {"rows": results, "growth_checkpointed": growth_ckpt, "growth_plain": growth_plain}, started)


if __name__ == "__main__":
    main()
