"""Null-label tuning: teach a label-conditioned DDPM an unconditional prediction again,
without changing what it does for its labels.

A guidance-distilled student (`genmnist.distillation.GuidanceDistillation`) is trained
without label dropout: its null label keeps the embedding its teacher learned, but the
network around it moves, so its unconditional prediction drifts and it cannot be guided.
Yet guidance is what trades its fidelity for diversity: the distilled guidance over-commits
each sample to its label's typical image at the first, pure-noise step, and guiding that
one step back toward the unconditional prediction restores most of the data's variety.

This task continues such a model: a share ``label_dropout`` of its training labels become
the null label and learn the data's unconditional denoising target (as label dropout
teaches any model), while every other label learns the base model's own prediction
(self-distillation), so the labels' behaviour stays as trained. The result is an ordinary
DDPM trained with label dropout, which takes classifier-free guidance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from genmnist.conditioning import drop_labels
from genmnist.distillation.teachers import SAME_NETWORK, load_frozen_model
from genmnist.errors import ConfigError
from genmnist.models.ddpm import DDPM, SAME_DENOISING
from genmnist.training.task import TRAINING_TASKS, TrainingTask

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel


class NullLabelTuning(TrainingTask):
    """Continue a label-conditioned DDPM (classes or clusters) so that its null label
    learns the unconditional prediction while its labels keep their predictions.

    The model being trained must have the base's U-Net and conditioning (it starts from
    its weights and clusters) and a ``label_dropout`` above 0: that share of each batch's
    labels is replaced by the null label, whose target is the training image itself; the
    others' target is the frozen base's estimate of the clean image.

    Args:
        base: A DDPM's run folder, or the name of a shipped DDPM (for the training
            dataset), conditioned on classes or clusters.
    """

    name = "null-label"

    def __init__(self, base: str) -> None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError("null-label tuning needs a base: a DDPM folder or name")
        self.base_source = base
        self.base: DDPM | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base_source}

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Load the base, check the model against it and, for a new run, start from its
        weights and clusters."""
        if not isinstance(model, DDPM):
            raise ConfigError(f"null-label tuning trains a DDPM, not a {type(model).__name__}")
        if not model.conditioning.num_labels:
            raise ConfigError(
                "null-label tuning needs a model with classes or clusters: an unconditional "
                "one has no null label to teach"
            )
        if not model.config.label_dropout > 0:
            raise ConfigError(
                "null-label tuning teaches the null label through label dropout: set "
                "label_dropout above 0 (0.1 to 0.2 is usual)"
            )
        base = self.base = load_frozen_model(
            self.base_source, data.name, model, "null-label tuning base", DDPM, "DDPM",
            SAME_DENOISING + SAME_NETWORK,
        )  # fmt: skip
        if not resume:
            model.unet.load_state_dict(base.unet.state_dict())
            model.conditioning.load_state_dict(base.conditioning.state_dict())

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """The denoising loss toward the image itself for null-labelled samples and toward
        the base's clean-image estimate for the others."""
        if self.base is None:
            raise ConfigError("null-label tuning: call prepare() before loss()")
        x0 = images * 2 - 1
        x_t, t, _ = model.add_noise(x0)
        cond = model.conditioning.training_labels(images, labels)
        cond = drop_labels(cond, model.conditioning.null_label, model.config.label_dropout)
        null = (cond == model.conditioning.null_label)[:, None, None, None]
        with torch.no_grad():
            kept = self.base.predict_x0(x_t, t, cond).float()
        target = torch.where(null, x0, kept)
        return {
            "loss": model.denoising_loss(x_t, t, cond, target),
            "null_share": null.float().mean(),
        }


TRAINING_TASKS.register(NullLabelTuning.name, NullLabelTuning)
