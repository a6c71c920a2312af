"""Data-parallel training helpers: torchrun's environment, the process group, devices.

[torchrun](https://pytorch.org/docs/stable/elastic/run.html) starts one process per
worker and tells each one its place through environment variables (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The
`genmnist.training.Trainer` reads them through this module: when ``WORLD_SIZE`` is
above 1 it joins the process group (gloo on the CPU, NCCL on CUDA), wraps the model in
``DistributedDataParallel`` and lets rank 0 alone write files. Without torchrun every
function here answers as a single process would (rank 0 of 1) and nothing is
initialised, so the single-process path has no overhead.

``genmnist train NAME --nproc N`` uses `launch` to start torchrun on one machine. See
[Training at scale](training-at-scale.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from genmnist.errors import ConfigError
from genmnist.threads import cpu_count

#: How long a collective may wait for the other processes before failing (a rank that
#: died leaves the others waiting at most this long when torchrun does not stop them).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Environment:
    """Where this process stands, as torchrun describes it (1 process when not launched
    by torchrun).

    Attributes:
        world_size: Number of processes in the job (all machines).
        rank: This process's index in the job, ``0 .. world_size - 1``.
        local_rank: Index among the processes of this machine (picks the GPU).
        local_world_size: Number of processes on this machine.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def environment() -> Environment:
    """The torchrun environment of this process (from the process group when one is
    initialised, else from the environment variables)."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got '{value}'") from None

    world_size, rank = read("WORLD_SIZE", 1), read("RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    local_world_size = read("LOCAL_WORLD_SIZE", world_size)
    env = Environment(world_size, rank, read("LOCAL_RANK", 0), local_world_size)
    if not 0 <= env.rank < env.world_size or not 0 <= env.local_rank < env.local_world_size:
        raise ConfigError(
            f"inconsistent torchrun environment: RANK {env.rank} of WORLD_SIZE "
            f"{env.world_size}, LOCAL_RANK {env.local_rank} of {env.local_world_size}"
        )
    return env


def is_main() -> bool:
    """True in the process that logs and writes files (rank 0, or the only process)."""
    return environment().rank == 0


def is_initialized() -> bool:
    """Whether a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def pick_device(requested: str | None = None) -> torch.device:
    """The device this process trains on.

    ``requested`` (``cpu``, ``cuda``, ``cuda:1``...) wins; without it, CUDA when available,
    else the CPU. Under torchrun a CUDA device without an index becomes
    ``cuda:LOCAL_RANK``, one GPU per process.
    """
    device = check_device(requested) if requested else None
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment()
    if device.type == "cuda" and device.index is None and env.distributed:
        device = torch.device("cuda", env.local_rank)
    return device


def check_device(name: str) -> torch.device:
    """``name`` as a device this machine has, for training.

    Raises:
        ConfigError: for a name torch does not know (``quantum``), a kind genmnist does not
            train on (``meta``), or a device this machine lacks (``cuda`` without a GPU,
            ``cuda:99`` with two).
    """
    from genmnist.errors import ConfigError

    usage = "use cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device: unknown device '{name}'; {usage}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device: '{name}' asks for CUDA, but no CUDA GPU is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device: no GPU {device.index} here (this machine has {count}: "
                f"cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device: '{name}' asks for MPS, which is not available here")
    elif device.type != "cpu":
        raise ConfigError(f"--device: genmnist does not train on '{device.type}'; {usage}")
    return device


def threads_per_process(processes: int) -> int:
    """Intra-op threads per process so ``processes`` processes share the cores."""
    return max(1, cpu_count() // max(1, processes))


def setup(device: torch.device) -> bool:
    """Join the process group torchrun describes; returns True if this call created it.

    Does nothing (returns False) for a single process or when the group already exists
    (a script that called ``init_process_group`` itself keeps it). The backend is NCCL for
    CUDA devices and gloo otherwise. Unless ``OMP_NUM_THREADS`` is set (torchrun sets it
    to 1 when it starts several processes per machine), each process gets
    ``cores // processes per machine`` threads.
    """
    env = environment()
    if not env.distributed or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: cannot train with DDP")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_process(env.local_world_size))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    return True


def teardown() -> None:
    """Leave the process group (if one is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``), None without one."""
    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all processes, in place; returns it (unchanged for one process).

    The tensor must live on the training device (NCCL reduces CUDA tensors only)."""
    if is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_(tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` (an iterable of tensors on the training device) in every
    process with those of rank ``src``, in place (no-op for one process)."""
    if is_initialized():
        for tensor in tensors:
            dist.broadcast(tensor, src)


def count_true(flag: bool, device: torch.device | str = "cpu") -> int:
    """How many processes passed a true ``flag`` (a collective: every process must call it)."""
    if not is_initialized():
        return int(flag)
    value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    return int(all_reduce_sum(value).item())


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if is_initialized():
        dist.barrier()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global RNG for one training step of one process.

    Reseeding at every step from ``(seed, step, rank)`` makes each process's random draws
    (noise, dropout, diffusion times) depend only on where it is, so a run is
    deterministic for a given seed and world size, and resumes, even with another number
    of processes, without saving every process's RNG state.
    """
    digest = hashlib.blake2b(f"genmnist:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m genmnist <args>`` in ``nproc`` processes through torchrun on this
    machine (standalone rendezvous on a free port); returns torchrun's exit code.

    Unless ``OMP_NUM_THREADS`` is set, each process gets ``cores // nproc`` threads.
    SIGINT and SIGTERM are passed on to torchrun, which passes them to every process, so
    Ctrl-C checkpoints and stops the run as it does for one process; the exit code is
    then 130. A process that fails gives its own exit code (1 for an error, see
    `torchrun`). If this process dies, even by SIGKILL, torchrun and its workers get
    SIGTERM (see `die_with_launcher`): none is left training on its own.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    command = [
        sys.executable, "-m", "genmnist.distributed", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "genmnist", *args,
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    env[PARENT_PID] = str(os.getpid())  # torchrun stops when this process dies, even by SIGKILL
    # A session of its own, so a terminal's Ctrl-C reaches torchrun once (through us).
    process = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):  # already gone
            process.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:  # a handler installed by someone else
                forward(signal.SIGINT, None)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received and code != 0:
        return 130
    return code


#: Environment variable naming the process whose death stops this one (see `die_with_launcher`).
PARENT_PID = "GENMNIST_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_launcher(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``signum`` to this process when the process that started it
    dies, however it dies (SIGKILL too), so no torchrun or worker is left training on
    its own: SIGTERM checkpoints and stops a training as Ctrl-C does. Linux only (returns
    False elsewhere). When the launcher named by ``GENMNIST_PARENT_PID`` is already gone,
    this process stops at once."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(PARENT_PID, "")
    if expected.isdigit() and os.getppid() != int(expected):  # it died before the prctl
        signal.raise_signal(signum)
    return True


def torchrun(argv: list[str]) -> int:
    """torchrun's command line (``python -m torch.distributed.run ARGS``), returning an exit
    code instead of raising: 130 when stopped by SIGINT/SIGTERM, else the exit code of the
    first process that failed (128 + N for one killed by signal N), so `genmnist train
    --nproc` exits like a single-process run, without torchrun's tracebacks."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    die_with_launcher()  # `launch` is its parent
    os.environ[PARENT_PID] = str(os.getpid())  # and it is its workers'
    try:
        run(parse_args(argv))
    except SignalException:
        return 130
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        code = failure.exitcode
        return 128 - code if code < 0 else code or 1
    return 0


if __name__ == "__main__":  # python -m genmnist.distributed: what `launch` starts
    sys.exit(torchrun(sys.argv[1:]))
