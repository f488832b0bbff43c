"""CLI latency: every read-only command against `python -c "import typer"`, measured in the same run.

Each command runs cold (a fresh interpreter each time) after one warm-up, which fills the OS file cache,
the catalog cache and the bytecode cache as any first use does (pip compiles an installed package's
bytecode; PYTHONDONTWRITEBYTECODE is dropped for the children so that a checkout gets the same). The
rounds interleave the baseline and the commands, so a machine that gets busier or quieter during the
run shifts them alike. Prints each median and its
ratio to the baseline's, in wall time and in CPU time (user + system, which other load on the machine does
not inflate); the target is a CPU-time ratio <= 2.0 for every command (exit 1 otherwise).

    .venv/bin/python benchmarks/cli_latency.py [--runs 15] [--only show search]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

BASELINE = ("python -c 'import typer'", [sys.executable, "-c", "import typer"])
READ_COMMANDS = [
    ["list", "--category", "reparameterized"],
    ["show", "lora"],
    ["search", "low rank"],
    ["tree"],
    ["cite", "lora"],
    ["graph", "lora"],
    ["stats"],
    ["crosswalk", "lora"],
]


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def seconds(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--target", type=float, default=2.0)
    parser.add_argument("--only", nargs="*", help="time only these commands (by name)")
    args = parser.parse_args()
    commands = [c for c in READ_COMMANDS if not args.only or c[0] in args.only]
    runs = {"baseline": BASELINE[1], **{" ".join(c): [sys.executable, "-m", "peftkb", *c] for c in commands}}
    for cmd in runs.values():
        subprocess.run(cmd, check=True, capture_output=True, env=ENV)  # warm-up: file, catalog, bytecode caches
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.runs):
        for name, cmd in runs.items():
            wall, cpu = seconds(cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    wall_med = {name: statistics.median(v) for name, v in walls.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpus.items()}
    count = subprocess.run([sys.executable, "-m", "peftkb", "list", "-f", "ids"], check=True, capture_output=True,
                           text=True).stdout.count("\n")
    names = [n for n in runs if n != "baseline"]
    width = max(len(n) for n in names) + len("peftkb ")
    print(f"catalog size: {count} methods; {args.runs} runs each, interleaved; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<{width}}  {'wall ms':>8} {'ratio':>6}   {'cpu ms':>8} {'ratio':>6}")
    print(f"{BASELINE[0]:<{width}}  {wall_med['baseline'] * 1000:8.1f} {'':>6}   {cpu_med['baseline'] * 1000:8.1f}")
    worst = 0.0
    for name in names:
        wall_ratio = wall_med[name] / wall_med["baseline"]
        cpu_ratio = cpu_med[name] / cpu_med["baseline"]
        worst = max(worst, cpu_ratio)
        flag = "" if cpu_ratio <= args.target else "   over target"
        print(f"{'peftkb ' + name:<{width}}  {wall_med[name] * 1000:8.1f} {wall_ratio:6.2f}   "
              f"{cpu_med[name] * 1000:8.1f} {cpu_ratio:6.2f}{flag}")
    print(f"worst CPU-time ratio: {worst:.2f} (target <= {args.target}). CPU time is what the command costs; "
          "wall time also counts waiting for a busy machine (equal to it on an idle one).")
    return 0 if worst <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
