"""
Times `agdm <command> --help` for every subcommand (and `agdm --help`), each in a fresh Python process as a user
would run it, and records whether that process imported torch. The target: under 1 s, without torch. A benchmark,
not a test: timings depend on the machine and its load.

    python benchmarks/help_time.py --repeats 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_results  # noqa: E402
from diffusers_agdm.commands import COMMANDS  # noqa: E402

TARGET_S = 1.0
# Runs `agdm ARGS` in this process, then reports the wall time and whether torch was imported.
PROBE = """import json, sys, time
began = time.perf_counter()
from diffusers_agdm.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({"seconds": time.perf_counter() - began, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def time_help(args: list[str]) -> dict:
    """One fresh process running `agdm ARGS --help`: its wall time (interpreter start included) and the probe's."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args, "--help"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    wall = time.perf_counter() - began
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    return {"wall_s": wall, "in_process_s": probe["seconds"], "imports_torch": probe["torch"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per command (the median is kept)")
    parser.add_argument("--seed", type=int, default=0, help="unused: nothing here is random (recorded)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}.")
    started = time.time()
    numbers = {}
    for name in ["", *COMMANDS]:
        runs = [time_help([name] if name else []) for _ in range(args.repeats)]
        numbers[f"agdm {name}".strip()] = {
            "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "median_in_process_s": round(statistics.median(r["in_process_s"] for r in runs), 3),
            "imports_torch": any(r["imports_torch"] for r in runs)}
    rows = [[f"`{command} --help`", f"{n['median_wall_s']:.2f}", f"{n['median_in_process_s']:.2f}",
             "yes" if n["imports_torch"] else "no",
             "ok" if n["median_wall_s"] < TARGET_S and not n["imports_torch"] else "SLOW"]
            for command, n in numbers.items()]
    print(markdown_table(["command", "wall (s)", "in process (s)", "imports torch", f"< {TARGET_S:g} s"], rows))
    write_results("help_time", vars(args), numbers, started)


if __name__ == "__main__":
    main()
