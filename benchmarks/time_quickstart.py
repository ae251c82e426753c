"""
Times the README's first steps after the install, read from the README itself (so the times and the commands cannot
drift apart), each run as a user would run it, in a fresh process and a fresh output folder:

- `first_success`: the `agdm` commands of the README's first bash block (`agdm info`, then `agdm purify --sample`),
  one after the other; the target is under 60 s wall in all on a 2-core machine (results/first_success_time.json);
- `evaluation`: the short `agdm evaluate ...` demonstration of the README's second bash block
  (results/quickstart_time.json).

Records wall time, CPU time and the load of the machine when it started (a busy machine is not a 2-core machine).

    python benchmarks/time_quickstart.py                       # both
    python benchmarks/time_quickstart.py --part first_success  # a minute
"""

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
FIRST_SUCCESS_TARGET_S = 60.0


def _bash_blocks(readme: Path) -> list[list[str]]:
    """Each bash block of the README as its commands (continuation lines joined, `&&` chains split)."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", readme.read_text(), flags=re.S | re.M)
    return [[part.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()
             and not line.strip().startswith("#") for part in line.split("&&")] for block in blocks]


def first_success_commands(readme: Path = README) -> list[list[str]]:
    """The `agdm` commands of the README's first bash block, as argument lists."""
    blocks = _bash_blocks(readme)
    commands = [shlex.split(part) for part in (blocks[0] if blocks else []) if part.startswith("agdm ")]
    if not commands:
        raise SystemExit(f"{readme}: the first bash block has no `agdm` command")
    return commands


def quickstart_command(readme: Path = README) -> list[str]:
    """The single `agdm evaluate ...` of the README's first bash blocks that has one, as an argument list."""
    for block in _bash_blocks(readme)[:3]:
        agdm = [part for part in block if part.startswith("agdm evaluate")]
        if len(agdm) == 1:
            return shlex.split(agdm[0])
    raise SystemExit(f"{readme}: no early bash block with a single `agdm evaluate` step")


def _timed(commands: list[list[str]]) -> dict:
    """Run the commands one after the other, each in a fresh process, in a fresh folder (their `--output_dir`s
    point into it); stop at the first failure."""
    with tempfile.TemporaryDirectory() as folder:
        runs, load_before = [], os.getloadavg()
        for command in commands:
            command = [str(Path(folder) / Path(word).name) if previous == "--output_dir" else word
                       for previous, word in zip([""] + command, command)]
            began = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            completed = subprocess.run(command, capture_output=True, text=True, cwd=folder)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runs.append({"command": shlex.join(command).replace(folder, "<tmp>"), "exit_code": completed.returncode,
                         "wall_s": round(time.perf_counter() - began, 1),
                         "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)})
            print(completed.stdout[-3000:], completed.stderr[-2000:] if completed.returncode else "")
            if completed.returncode:
                break
    return {"commands": runs, "exit_code": max(run["exit_code"] for run in runs),
            "wall_s": round(sum(run["wall_s"] for run in runs), 1),
            "cpu_s": round(sum(run["cpu_s"] for run in runs), 1),
            "load_average_before": [round(x, 2) for x in load_before], "cpu_count": os.cpu_count()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("first_success", "evaluation", "both"), default="both",
                        help="which of the README's first steps to time")
    parser.add_argument("--seed", type=int, default=0, help="unused: the commands fix their own seeds (recorded)")
    args = parser.parse_args(argv)
    if args.part in ("first_success", "both"):
        started = time.time()
        numbers = _timed(first_success_commands())
        numbers["target_s"], numbers["met"] = FIRST_SUCCESS_TARGET_S, numbers["wall_s"] < FIRST_SUCCESS_TARGET_S
        print({k: v for k, v in numbers.items() if k != "commands"})
        write_results("first_success_time", vars(args), numbers, started)
    if args.part in ("evaluation", "both"):
        started = time.time()
        numbers = _timed([quickstart_command()])
        numbers["command"] = numbers["commands"][0]["command"]
        print({k: v for k, v in numbers.items() if k != "commands"})
        write_results("quickstart_time", vars(args), numbers, started)


if __name__ == "__main__":
    main()
