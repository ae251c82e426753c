"""
Times the README's first set-up command after the install: the `agdm evaluate ...` it ends with, read from the README
itself (so the time and the command cannot drift apart), run as a user would run it, in a fresh output folder.
Records wall time, CPU time and the load of the machine when it started (a busy machine is not a 2-core machine).

    python benchmarks/time_quickstart.py
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


def quickstart_command(readme: Path = README) -> list[str]:
    """The `agdm evaluate ...` part of the README's first bash block, as an argument list."""
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    if not blocks:
        raise SystemExit(f"{readme}: no bash block")
    parts = [part.strip() for part in blocks[0].replace("\\\n", " ").split("&&")]
    agdm = [part for part in parts if part.startswith("agdm evaluate")]
    if len(agdm) != 1:
        raise SystemExit(f"{readme}: the first bash block has no single `agdm evaluate` step")
    return shlex.split(agdm[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="unused: the command fixes its own seeds (recorded)")
    args = parser.parse_args(argv)
    command = quickstart_command()
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        command = [folder + "/quickstart" if previous == "--output_dir" else word
                   for previous, word in zip([""] + command, command)]
        load_before = os.getloadavg()
        began = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        completed = subprocess.run(command, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - began
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(completed.stdout[-3000:])
    numbers = {"command": shlex.join(command), "exit_code": completed.returncode, "wall_s": round(wall, 1),
               "cpu_s": round(cpu, 1), "load_average_before": [round(x, 2) for x in load_before],
               "cpu_count": os.cpu_count()}
    print({k: v for k, v in numbers.items() if k != "command"})
    write_results("quickstart_time", vars(args), numbers, started)


if __name__ == "__main__":
    main()
