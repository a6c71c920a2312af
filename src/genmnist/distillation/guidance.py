"""Guidance distillation (Meng et al., 2023, "On Distillation of Guided Diffusion Models"):
a student DDPM learns its teacher's *guided* denoiser, so it samples at the guided
quality with one U-Net call per step instead of two."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from genmnist.diffusion.guidance import check_interval, check_scale
from genmnist.distillation.teachers import SAME_NETWORK
from genmnist.errors import CheckpointError, ConfigError
from genmnist.models.ddpm import DDPM, SAME_DENOISING
from genmnist.training.task import TRAINING_TASKS, TrainingTask

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel


class GuidanceDistillation(TrainingTask):
    """Train a DDPM student on its teacher's guided estimates of clean images, at random
    noise levels of real training images.

    The student starts from the teacher's U-Net (and clusters), sees every label (no label
    dropout) and learns the guided estimate for it; it must be configured with
    ``label_dropout`` 0, so that it is, by construction, a model that takes no guidance.

    Args:
        teacher: A model folder or shipped model name (for the training dataset) whose
            denoiser takes guidance: a DDPM with classes or clusters, or an `Autoguided`.
        guidance: The teacher's guidance scale to distil (None: its default).
        guidance_interval: The log-SNR interval ``[low, high]`` the teacher guides in
            (None: its default), so a student can learn guidance limited to the middle
            noise levels.
    """

    name = "guidance-distillation"

    def __init__(
        self,
        teacher: str,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | list[float] | None = None,
    ) -> None:
        if not isinstance(teacher, str) or not teacher.strip():
            raise ConfigError("guidance distillation needs a teacher: a model folder or name")
        self.teacher_source = teacher
        self.guidance = None if guidance is None else check_scale(guidance)
        self.guidance_interval = (
            None if guidance_interval is None else check_interval(guidance_interval)
        )
        self.teacher: GenerativeModel | None = None

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": self.name,
            "teacher": self.teacher_source,
            "guidance": self.guidance,
        }
        if self.guidance_interval is not None:
            record["guidance_interval"] = list(self.guidance_interval)
        return record

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Load the teacher, check that the student can learn from it and, for a new run,
        copy its U-Net (and clusters) into the student."""
        from genmnist.models import load

        if not isinstance(model, DDPM):
            raise ConfigError(f"guidance distillation trains a DDPM, not a {type(model).__name__}")
        if model.config.label_dropout != 0:
            raise ConfigError(
                "a guidance-distilled student has its guidance built in: set its label_dropout to 0"
            )
        try:
            teacher = load(self.teacher_source, dataset=data.name)
        except CheckpointError as exc:
            raise CheckpointError(f"distillation teacher: {exc}") from None
        network = getattr(teacher, "model", teacher)  # an autoguided teacher's main model
        if not isinstance(network, DDPM):
            raise ConfigError(
                f"distillation teacher '{self.teacher_source}' is a {type(teacher).__name__}, "
                "not a diffusion model"
            )
        if self.guidance_interval is not None and not isinstance(teacher, DDPM):
            raise ConfigError(
                f"distillation teacher '{self.teacher_source}' is a {type(teacher).__name__}, "
                "which guides at every noise level: leave out guidance_interval"
            )
        if isinstance(teacher, DDPM) and teacher.guidance_problem:
            raise ConfigError(
                f"distillation teacher '{self.teacher_source}' {teacher.guidance_problem}: "
                "there is no guidance to distil"
            )
        if problem := model.config.first_difference(network.config, SAME_DENOISING + SAME_NETWORK):
            raise ConfigError(f"distillation teacher '{self.teacher_source}': {problem}")
        teacher.eval().requires_grad_(False).to(model.device)
        self.teacher = teacher
        if not resume:
            model.unet.load_state_dict(network.unet.state_dict())
            model.conditioning.load_state_dict(network.conditioning.state_dict())

    def guided_teacher(self, labels: torch.Tensor | None):
        """The teacher's guided denoiser for ``labels``, limited to the task's interval
        when it names one."""
        if self.guidance_interval is None:
            return self.teacher.denoiser(labels, self.guidance)
        return self.teacher.denoiser(labels, self.guidance, self.guidance_interval)

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """The student's denoising loss with the teacher's guided estimate of the clean
        image as the target (and the noise that estimate implies)."""
        if self.teacher is None:
            raise ConfigError("guidance distillation: call prepare() before loss()")
        x_t, t, _ = model.add_noise(images * 2 - 1)
        cond = model.conditioning.training_labels(images, labels)
        with torch.no_grad():
            target = self.guided_teacher(cond)(x_t, t).float()
        return {"loss": model.denoising_loss(x_t, t, cond, target)}


TRAINING_TASKS.register(GuidanceDistillation.name, GuidanceDistillation)
