"""The shared trainer: one loop for every model family.

It reads the recipe (batch size, optimizer, learning-rate schedule, EMA, precision) from
the model's config, steps one optimizer per entry of `optimizer_groups` (so GANs work the
same way as VAEs), optimises what the `TrainingTask` says (by default the model's own
`training_loss` on the data), and keeps a run folder (`genmnist.run_folder`: config,
exported weights, checkpoint, metrics log, loss curves).

Runs are deterministic for a seed on the CPU: a run stopped and resumed ends with the
same weights as one that never stopped.

Launched by torchrun, the same loop trains data-parallel (DistributedDataParallel; see
`genmnist.distributed`): ``batch_size`` stays the global batch, each process takes an
equal, contiguous share of it, and only rank 0 logs and writes the run folder.

The package's modules, each a collaborator of the loop:

* ``loop``: the `Trainer`;
* ``options``: `TrainOptions`, `TrainResult`, `TrainingInterrupted`;
* ``task``: `TrainingTask` and the `TRAINING_TASKS` registry;
* ``optim``: `OPTIMIZERS`, `LR_SCHEDULES`, building optimizers and schedulers, the EMA;
* ``recipe``: checks of the config's training fields, precision, epochs;
* ``parallel``: the DDP wrapper and the collectives (`step_consensus`: every process
  agrees whether the loss is finite and whether a stop was requested);
* ``signals``: SIGINT/SIGTERM as a request to stop after the step;
* ``console``: progress lines and the progress bar (rank 0 only);
* ``loggers``: where the metrics records go (``metrics.jsonl``, TensorBoard), the
  `METRICS_LOGGERS` registry.
"""

from genmnist.run_folder import CHECKPOINT_FILE, CURVE_FILE, METRICS_FILE
from genmnist.training.loop import Trainer, pick_device
from genmnist.training.optim import (
    LR_SCHEDULES,
    OPTIMIZERS,
    constant_schedule,
    cosine_schedule,
    linear_schedule,
)
from genmnist.training.options import TrainingInterrupted, TrainOptions, TrainResult
from genmnist.training.parallel import QUIET_DELAY, StepConsensus, step_consensus
from genmnist.training.task import (
    TRAINING_TASKS,
    TrainingTask,
    build_task_network,
    check_network_spec,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CURVE_FILE",
    "LR_SCHEDULES",
    "METRICS_FILE",
    "OPTIMIZERS",
    "QUIET_DELAY",
    "TRAINING_TASKS",
    "StepConsensus",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "TrainingTask",
    "build_task_network",
    "check_network_spec",
    "constant_schedule",
    "cosine_schedule",
    "linear_schedule",
    "pick_device",
    "step_consensus",
]
