"""Training tasks: what the trainer optimises for a model.

The default task, ``data``, learns the training data through the model's own hooks
(`GenerativeModel.prepare_training` and `GenerativeModel.training_loss`). A subclass
changes the loss (distillation from a teacher, say) without changing the model: register
it in `TRAINING_TASKS` under its `TrainingTask.name`, and give
``Trainer(..., task=MyTask(...))``. The task's `TrainingTask.record` is saved in the
checkpoint header, so ``--resume`` continues a run only with the task it was trained
with; exported weights and ``config.json`` stay those of the model alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from genmnist.errors import CheckpointError, ConfigError
from genmnist.registry import Registry

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel

#: Training tasks by name; a checkpoint's task record names one.
TRAINING_TASKS: Registry = Registry(
    "training task",
    builtins=("genmnist.distillation", "genmnist.finetuning", "genmnist.objectives"),
)


@TRAINING_TASKS.register("data")
class TrainingTask:
    """Default: learn the data. Subclasses (e.g. distillation from a teacher) change the loss.

    A subclass sets a new `name`, registers itself in `TRAINING_TASKS` and, when its
    constructor takes arguments, returns them from `record` beside the name (JSON values)
    so that `from_record` can rebuild it.
    """

    #: The name the task is registered under and recorded with.
    name: ClassVar[str] = "data"

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Called once before the optimizers are built (see
        `GenerativeModel.prepare_training`, which the default calls)."""
        model.prepare_training(data, resume)

    def finish(self, model: GenerativeModel, data: InMemoryDataset) -> None:
        """Called once after the last step, on the weights that are exported, in eval
        mode (see `GenerativeModel.finish_training`, which the default calls)."""
        model.finish_training(data)

    def networks(self) -> nn.Module | None:
        """Networks the task trains beside the model (a discriminator, say), or None.

        They are checkpointed with the run (under ``task.``) and restored by ``--resume``,
        but not exported: the run's weights stay those of the model alone. `prepare`
        creates them on the model's device."""
        return None

    def optimizer_groups(self, model: GenerativeModel) -> dict[str, Any]:
        """Parameters per optimizer, in the order the trainer steps them; `loss` is called
        once per group with ``phase`` set to its name. Default: the model's own
        (`GenerativeModel.optimizer_groups`)."""
        return model.optimizer_groups()

    def optimizer_options(self, model: GenerativeModel, phase: str) -> dict[str, Any]:
        """Per-phase overrides of the optimizer settings. Default: the model's own
        (`GenerativeModel.optimizer_options`)."""
        return model.optimizer_options(phase)

    def loss(
        self, model: GenerativeModel, images: Tensor, labels: Tensor, step: int, phase: str
    ) -> dict[str, Tensor]:
        """The losses of one batch for one phase: the scalar to minimise under ``"loss"``
        and any other scalars to log (see `GenerativeModel.training_loss`, which the
        default calls)."""
        return model.training_loss(images, labels, step, phase)

    def record(self) -> dict[str, Any]:
        """What identifies the task, as JSON: its ``name`` and its constructor's keyword
        arguments. Saved in the checkpoint header."""
        return {"name": self.name}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, where: str = "") -> TrainingTask:
        """The task a record describes, rebuilt through `TRAINING_TASKS`: a checkpoint
        header's (None, a header of a run from before tasks were recorded: the default data
        task) or the ``"task"`` entry of a recipe (``where`` names the file for messages).

        Raises:
            CheckpointError: the record is not a task record, or does not fit the task.
            RegistryError: no task of that name is registered.
            ConfigError: the task refuses its options.
        """
        prefix = f"{where}: " if where else ""
        if record is None:
            return TrainingTask()
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise CheckpointError(
                f"{prefix}not a training task record (an object with a 'name'): {record!r}"[:300]
            )
        task_class = TRAINING_TASKS.get(record["name"])
        options = {k: v for k, v in record.items() if k != "name"}
        try:
            return task_class(**options)
        except TypeError:
            raise CheckpointError(
                f"{prefix}the task record {record!r} does not fit {task_class.__name__}"[:300]
            ) from None


def check_same_task(saved: dict[str, Any] | None, task: TrainingTask, path: Path) -> None:
    """`CheckpointError` unless the run in ``path`` was trained with ``task`` (a header
    without a task record was written with the default data task)."""
    saved = saved if saved is not None else TrainingTask().record()
    if saved != task.record():
        raise CheckpointError(
            f"{path}: the run was trained with the task {saved}, not {task.record()}; "
            "resume it with its own task"
        )


#: A task network's weights, gradients and two Adam moments: four copies of the weights.
TRAINED_COPIES = 4


def check_network_spec(registry: Registry, what: str, spec: Any) -> dict[str, Any]:
    """A copy of the recipe's description of a task network (an object with its ``name`` in
    ``registry`` and its options), or a one-line error naming ``what``: a spec that is not
    such an object, or names no registered network, fails before any training."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"{what}: an object with its 'name' (e.g. 'conv') and its options, got {spec!r}"[:200]
        )
    registry.get(spec["name"])
    return dict(spec)


def build_task_network(
    registry: Registry,
    what: str,
    spec: dict[str, Any],
    device: torch.device | str,
    probe: Callable[[nn.Module], Any],
    **fixed: Any,
) -> nn.Module:
    """The network a task's recipe asks for (``spec``: its ``name`` in ``registry`` and its
    options; ``fixed``: the arguments the task decides), checked before training.

    The checks turn what a recipe could get wrong into one-line `ConfigError` messages that
    start with ``what``: options of the wrong name or type, a network too large for the
    available memory (measured on the meta device, before anything is allocated), and a
    network that cannot take the model's images (``probe`` runs it once, without
    gradients, and raises on a wrong output).
    """
    from genmnist.memory import check_fits

    options = {k: v for k, v in spec.items() if k != "name"}

    def create() -> nn.Module:
        try:
            return registry.create(spec["name"], **fixed, **options)
        except (TypeError, ValueError) as exc:  # options of the wrong name or type
            raise ConfigError(f"{what}: {exc}"[:300]) from None

    with torch.device("meta"):
        meta = create()
    nbytes = sum(t.numel() * t.element_size() for t in meta.state_dict().values())
    check_fits(TRAINED_COPIES * nbytes, f"training the {what}", "make its layers smaller")
    network = create().to(device)
    try:
        with torch.no_grad():
            probe(network)
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} cannot take the model's images: {first}"[:300]) from None
    return network
