"""CLI latency: `peftkb list --category reparameterized` against `python -c "import typer"`, same run.

Both are run cold (a fresh interpreter each time) N times after one warm-up (which also fills the
catalog cache, as any first use does). Prints both medians and their ratio; the target is <= 2.0.

    .venv/bin/python benchmarks/cli_latency.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up: OS file cache, catalog cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--target", type=float, default=2.0)
    args = parser.parse_args()
    baseline = median_seconds([sys.executable, "-c", "import typer"], args.runs)
    listing = median_seconds([sys.executable, "-m", "peftkb", "list", "--category", "reparameterized"], args.runs)
    ratio = listing / baseline
    count = subprocess.run([sys.executable, "-m", "peftkb", "list", "-f", "ids"], check=True, capture_output=True,
                           text=True).stdout.count("\n")
    print(f"catalog size:                                 {count} methods")
    print(f"python -c 'import typer'          median:    {baseline * 1000:7.1f} ms")
    print(f"peftkb list --category reparameterized median: {listing * 1000:7.1f} ms")
    print(f"ratio: {ratio:.2f} (target <= {args.target})")
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
