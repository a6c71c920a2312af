"""Wall time of ``genmnist sample MODEL -n 64`` against a bare ``python -c "import torch"``.

    python benchmarks/sample_speed.py [--models ddpm ddpm-cfg cgan] [--repeats 5] [--busy 1]

The goal: with the default sampler, ``genmnist sample ddpm -n 64`` finishes within
about 1.5x the time of importing torch alone, measured in the same run on the same
machine. Each command runs as a fresh process (as a user runs it), alternating with the
bare import so that load on the machine hits both alike; the table shows medians and the
ratio (lower is better). Pass ``-- --steps 10`` style extras with ``--extra``.

``--busy N`` keeps N CPU-bound processes running beside every command, as on a machine
shared with a training run, and adds each model once more with the thread policy off
(``GENMNIST_KEEP_THREADS=1``, torch's default pool), the peer that shows what the policy
(`genmnist.threads`) gains under load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall_time(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    return time.perf_counter() - start


def spinners(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep one core each busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ddpm"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--extra", default="", help="extra sample options, e.g. '--steps 10'")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.pop("GENMNIST_KEEP_THREADS", None)
    kept = {**env, "GENMNIST_KEEP_THREADS": "1"}
    competitors = spinners(args.busy)
    try:
        run(args, env, kept)
    finally:
        for process in competitors:
            process.kill()
            process.wait()


def run(args: argparse.Namespace, env: dict[str, str], kept: dict[str, str]) -> None:

    bare = [sys.executable, "-c", "import torch"]
    with tempfile.TemporaryDirectory() as tmp:
        output = str(Path(tmp) / "samples.png")
        commands = {
            model: [sys.executable, "-m", "genmnist", "sample", model, "-n", str(args.n),
                    "-o", output, "--overwrite", "--seed", "0", *args.extra.split()]
            for model in args.models
        }  # fmt: skip
        environments = {model: env for model in commands}
        if args.busy:  # the same commands with torch's own thread pool, as the peer
            for model in args.models:
                commands[f"{model} (threads kept)"] = commands[model]
                environments[f"{model} (threads kept)"] = kept
        wall_time(bare, env)  # warm the file cache for both
        for model, command in commands.items():
            wall_time(command, environments[model])
        times: dict[str, list[float]] = {"import torch": [], **{m: [] for m in commands}}
        for _ in range(args.repeats):
            for model, command in commands.items():
                times["import torch"].append(wall_time(bare, env))
                times[model].append(wall_time(command, environments[model]))
    base = statistics.median(times["import torch"])
    if args.busy:
        print(f"with {args.busy} CPU-bound process(es) running beside every command")
    print(f"{'command':<40} {'median s':>9} {'x import torch':>15}")
    bare_label = 'python -c "import torch"'
    print(f"{bare_label:<40} {base:>9.2f} {1.0:>15.2f}")
    for model in commands:
        median = statistics.median(times[model])
        name, _, note = model.partition(" ")
        label = f"genmnist sample {name} -n {args.n} {args.extra} {note}".strip()
        print(f"{label:<40} {median:>9.2f} {median / base:>15.2f}")


if __name__ == "__main__":
    main()
