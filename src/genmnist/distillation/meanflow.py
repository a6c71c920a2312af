"""MeanFlow distillation: a `genmnist.models.meanflow.MeanFlow` student learns the average
velocity of its flow teacher's ODE, so one student step covers what the teacher's many
steps do.

It is MeanFlow training (Geng et al., 2025) with the teacher's (guided) velocity at
``z_t`` in place of the path's velocity ``eps - x``: the target
``v_teacher - (t - r) du/dt`` then follows the teacher's deterministic paths instead of the
noisier conditional ones, and the student takes on the teacher's guidance. Unlike reflow
it needs no pairs drawn in advance, but each step costs a Jacobian-vector product of the
student and a guided call of the teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from genmnist.distillation.teachers import load_flow_model
from genmnist.errors import ConfigError
from genmnist.models.meanflow import MeanFlow
from genmnist.training.task import TRAINING_TASKS, TrainingTask

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel
    from genmnist.models.flow import FlowMatching


class MeanFlowDistillation(TrainingTask):
    """Train a MeanFlow student on a flow teacher's velocity field.

    A new run starts the student from ``start``'s network (default: the teacher's; a
    reflowed student of the teacher starts closer to one-step sampling) and clusters; a
    flow network's missing step-length embedding starts at zero. The student sees every
    label (no label dropout), so the teacher's guidance is built in.

    Args:
        teacher: A flow model's folder or shipped name (for the training dataset).
        start: A flow or MeanFlow model whose weights the student starts from (None: the
            teacher).
    """

    name = "meanflow-distillation"

    def __init__(self, teacher: str, start: str | None = None) -> None:
        named = {"teacher": teacher} if start is None else {"teacher": teacher, "start": start}
        for option, value in named.items():
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"meanflow distillation {option} must be a flow model's "
                                  f"folder or name, got {value!r}")  # fmt: skip
        self.teacher_source = teacher
        self.start_source = start
        self.teacher: FlowMatching | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "teacher": self.teacher_source, "start": self.start_source}

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Load the teacher, check the student against it and, for a new run, copy the
        starting network and clusters into the student."""
        if not isinstance(model, MeanFlow):
            raise ConfigError(f"meanflow distillation trains a MeanFlow model, "
                              f"not a {type(model).__name__}")  # fmt: skip
        if model.config.label_dropout != 0 and model.conditioning.num_labels:
            raise ConfigError(
                "a meanflow-distilled student has its teacher's guidance built in: "
                "set its label_dropout to 0"
            )
        self.teacher = load_flow_model(
            self.teacher_source, data.name, model, "meanflow distillation teacher"
        )
        if resume:
            return
        start = self.teacher
        if self.start_source is not None:
            start = load_flow_model(self.start_source, data.name, model, "meanflow start")
        missing, unexpected = model.unet.load_state_dict(start.unet.state_dict(), strict=False)
        if unexpected or any(not key.startswith("interval_mlp.") for key in missing):
            raise ConfigError(f"meanflow start '{self.start_source}': its U-Net does not fit")
        model.conditioning.load_state_dict(start.conditioning.state_dict())

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """MeanFlow's loss at points of the data-noise path, with the teacher's guided
        velocity there as the instantaneous velocity."""
        if self.teacher is None:
            raise ConfigError("meanflow distillation: call prepare() before loss()")
        x = images * 2 - 1
        eps = torch.randn_like(x)
        r, t = model.training_times(x.shape[0], x.device)
        cond = model.conditioning.training_labels(images, labels)
        z = model.path.interpolate(x, eps, t)
        with torch.no_grad():
            velocity = self.teacher.velocity(cond)(z, t).float()
        return model.mean_flow_loss(z, r, t, velocity, cond)


TRAINING_TASKS.register(MeanFlowDistillation.name, MeanFlowDistillation)
