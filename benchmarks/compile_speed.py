"""Does ``--compile`` (torch.compile) pay? Each case runs eager and compiled in a pair of
fresh processes, alternating, and reports the compiled/eager ratio (lower is better).

    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py [--repeats 2] [--cases sample train]

Cases:

* ``sample``: ``model.sample(64)`` of the shipped ``ddpm`` (its 6 DPM-Solver++ steps,
  bf16 autocast), as ``genmnist sample ddpm -n 64 [--compile]`` runs it;
* ``train``: 50 steps of ``dcgan`` (batch 64, bf16 autocast), as
  ``genmnist train dcgan --max-steps 50 [--compile]`` runs them, on MNIST from
  ``GENMNIST_DATA`` (synthetic images when it is unset).

For each process: ``process``, its whole wall time (import, load, compile, work: what a
user waits for); ``first``, the first call (sampling) or the whole run (training),
compilation included; ``steady``, a second sampling call, or the seconds per step over
steps 31-50, once compiled (what a long job would see). Compiled processes start with an
empty TorchInductor cache (``--warm-cache`` keeps one across the repeats instead) and
one compile thread, so a run takes what a first ``--compile`` takes for a user.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("sample", "train")


def run_case(case: str, compiled: bool) -> dict[str, float]:
    """One measurement in this process (called through ``--one``)."""
    import torch

    import genmnist
    from genmnist.compiling import compile_model

    torch.manual_seed(0)
    if case == "sample":
        model = genmnist.load("ddpm")
        if compiled:
            compile_model(model)
        start = time.perf_counter()
        model.sample(64, seed=0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.sample(64, seed=1)
        return {"first": first, "steady": time.perf_counter() - start}
    from genmnist.run_folder import read_metrics
    from genmnist.training import Trainer, TrainOptions

    data = None
    if not os.environ.get("GENMNIST_DATA"):
        from genmnist.data import InMemoryDataset

        images = torch.randint(0, 256, (6400, 28, 28), dtype=torch.uint8)
        data = InMemoryDataset(images, torch.arange(6400) % 10, "mnist", "train")
    with tempfile.TemporaryDirectory() as out:
        options = TrainOptions(
            out=Path(out) / "run", max_steps=50, log_every=10, progress=False,
            device="cpu", checkpoint_every=1000, compile=compiled,
        )  # fmt: skip
        model = genmnist.create_model("dcgan")
        start = time.perf_counter()
        Trainer(model, options, dataset=data, log=lambda message: None).fit()
        first = time.perf_counter() - start
        records = read_metrics(Path(out) / "run")
    # seconds per step over the last two logging windows (steps 31-50)
    rates = [r["images_per_second"] for r in records if r["step"] > 30]
    steady = statistics.mean(64 / rate for rate in rates)
    return {"first": first, "steady": steady}


def measure(case: str, compiled: bool, cache: str) -> dict[str, float]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TORCHINDUCTOR_CACHE_DIR": cache,
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
    }
    command = [sys.executable, __file__, "--one", case] + (["--compiled"] if compiled else [])
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return {"process": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warm-cache", action="store_true")
    parser.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.compiled)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            times: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for repeat in range(args.repeats):
                for compiled in (False, True):  # one pair of processes, back to back
                    cache = str(Path(tmp) / ("warm" if args.warm_cache else f"cold-{repeat}"))
                    times[compiled].append(measure(case, compiled, cache))
            print(f"\n{case} (median of {args.repeats}; seconds)")
            print(f"{'':<10} {'eager':>8} {'compiled':>9} {'ratio':>7}")
            for key in ("process", "first", "steady"):
                eager = statistics.median(t[key] for t in times[False])
                compiled = statistics.median(t[key] for t in times[True])
                print(f"{key:<10} {eager:>8.2f} {compiled:>9.2f} {compiled / eager:>7.2f}")
            for compiled in (False, True):
                label = "compiled" if compiled else "eager"
                print(f"  {label} runs: {json.dumps(times[compiled])}")


if __name__ == "__main__":
    main()
