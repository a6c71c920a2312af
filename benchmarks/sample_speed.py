"""Wall time of ``genmnist sample MODEL -n 64`` against a bare ``python -c "import torch"``.

    python benchmarks/sample_speed.py [--models ddpm ddpm-cfg cgan] [--repeats 5]

The goal: with the default sampler, ``genmnist sample ddpm -n 64`` finishes within
about 1.5x the time of importing torch alone, measured in the same run on the same
machine. Each command runs as a fresh process (as a user runs it), alternating with the
bare import so that load on the machine hits both alike; the table shows medians and the
ratio (lower is better). Pass ``-- --steps 10`` style extras with ``--extra``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ddpm"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--extra", default="", help="extra sample options, e.g. '--steps 10'")
    args = parser.parse_args()

    bare = [sys.executable, "-c", "import torch"]
    with tempfile.TemporaryDirectory() as tmp:
        output = str(Path(tmp) / "samples.png")
        commands = {
            model: [sys.executable, "-m", "genmnist", "sample", model, "-n", str(args.n),
                    "-o", output, "--seed", "0", *args.extra.split()]
            for model in args.models
        }  # fmt: skip
        wall_time(bare)  # warm the file cache for both
        for command in commands.values():
            wall_time(command)
        times: dict[str, list[float]] = {"import torch": [], **{m: [] for m in commands}}
        for _ in range(args.repeats):
            for model, command in commands.items():
                times["import torch"].append(wall_time(bare))
                times[model].append(wall_time(command))
    base = statistics.median(times["import torch"])
    print(f"{'command':<40} {'median s':>9} {'x import torch':>15}")
    bare_label = 'python -c "import torch"'
    print(f"{bare_label:<40} {base:>9.2f} {1.0:>15.2f}")
    for model in commands:
        median = statistics.median(times[model])
        label = f"genmnist sample {model} -n {args.n} {args.extra}".strip()
        print(f"{label:<40} {median:>9.2f} {median / base:>15.2f}")


if __name__ == "__main__":
    main()
