"""Process-group set-up that also works on machines without a GPU."""

import os

import torch


def needs_cpu_process_group() -> bool:
    """True for a multi-process launch (`accelerate launch --multi_gpu --num_processes N`, torchrun) on a machine
    without CUDA. Accelerate then only forms a gloo (MULTI_CPU) group when told `cpu=True`; otherwise every process
    silently runs alone, repeating the same work and writing the same files."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
