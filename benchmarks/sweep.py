"""Wall time of one sweep run sequentially (hydra/launcher=basic) and in parallel (the default
Ray launcher; on a GPU, `jobs_per_gpu` jobs packed on each), side by side.

    python benchmarks/sweep.py                         # 8 short mlp runs on the ring
    python benchmarks/sweep.py --jobs 2 --steps 200    # issue 3's two-job check
    python benchmarks/sweep.py --jobs-per-gpu 4        # on a GPU machine
"""

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(sweep_dir: Path, seeds: str, steps: int, extra: list[str]) -> float:
    command = [sys.executable, "-m", "gan_experiments", "-m", "model=mlp", "data=ring", f"seed={seeds}",
               f"trainer.steps={steps}", f"hydra.sweep.dir={sweep_dir}", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"sweep failed:\n{result.stderr[-3000:]}")
    with open(sweep_dir / "sweep_status.csv") as f:
        statuses = [row["status"] for row in csv.DictReader(f)]
    print(f"  {extra[0] if extra else 'parallel'}: {elapsed:.1f} s, statuses {statuses}", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--jobs-per-gpu", type=int, default=4)
    args = parser.parse_args()
    seeds = ",".join(str(i) for i in range(args.jobs))
    with tempfile.TemporaryDirectory() as tmp:
        sequential = run_sweep(Path(tmp) / "sequential", seeds, args.steps, ["hydra/launcher=basic"])
        parallel = run_sweep(Path(tmp) / "parallel", seeds, args.steps,
                             [f"jobs_per_gpu={args.jobs_per_gpu}"])
    print(f"\n| jobs | steps | sequential s | parallel s | speed-up |\n|---|---|---|---|---|\n"
          f"| {args.jobs} | {args.steps} | {sequential:.1f} | {parallel:.1f} | {sequential / parallel:.2f}x |")


if __name__ == "__main__":
    main()
