"""Auxiliary classifier: a GAN whose generator must also draw images that a classifier,
trained on real images alone, assigns to the label they were drawn for.

A conditional GAN learns its labels only through the discriminator's projection term,
which rewards images that look real *for* their label but does not punish one that
could belong to two labels; an AC-GAN (Odena et al., 2017) adds a classification loss.
Here the classifier is a network of its own, trained on real images only (not on fakes,
which in AC-GAN rewards the generator for drawing the easiest-to-classify images of each
label), and the generator minimises its adversarial loss plus ``weight`` times the
classifier's cross-entropy on its images. The labels are the model's own: the dataset's
classes for ``cgan``, its k-means clusters for a self-conditioned GAN.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from genmnist.errors import ConfigError
from genmnist.models.base import IMAGE_SHAPE
from genmnist.nn import ENCODERS
from genmnist.nn.modes import evaluating
from genmnist.training.task import (
    TRAINING_TASKS,
    TrainingTask,
    build_task_network,
    check_network_spec,
)

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel
    from genmnist.models.gan import GAN

#: The classifier unless the recipe says otherwise: the VAEs' conv encoder with one
#: output per label (three stride-2 convolutions and a linear head).
DEFAULT_CLASSIFIER = {"name": "conv", "hidden_dims": [32, 64, 128]}


class AuxiliaryClassifier(TrainingTask):
    """Train a labelled GAN (classes or clusters) with a classification term in its
    generator's loss.

    Each step runs three phases: the GAN's discriminator phase, a ``classifier`` phase
    (cross-entropy of the classifier on the batch of real images and their labels) and
    the GAN's generator phase plus ``weight`` times the classifier's cross-entropy on the
    generator's images for the labels they were drawn for (classifier frozen and in eval
    mode). The classifier is checkpointed with the run and not exported.

    Args:
        weight: Weight of the classification term against the adversarial loss.
        classifier: The classifier: ``name`` in `genmnist.nn.ENCODERS` and its keyword
            arguments (its output size is the model's number of labels).
    """

    name = "auxiliary-classifier"

    def __init__(self, weight: float = 1.0, classifier: dict[str, Any] | None = None) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"weight must be a number, got {weight!r}"[:200])
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"weight must be a finite number 0 or more, got {weight}")
        self.classifier_spec = check_network_spec(
            ENCODERS, "classifier", DEFAULT_CLASSIFIER if classifier is None else classifier
        )
        self.weight = float(weight)
        self.classifier: nn.Module | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "classifier": self.classifier_spec}

    def networks(self) -> nn.Module | None:
        return self.classifier

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Check that the model is a GAN with labels, prepare it and build the classifier."""
        from genmnist.models.gan import GAN

        if not isinstance(model, GAN):
            raise ConfigError(
                f"the auxiliary classifier trains a GAN, not a {type(model).__name__}"
            )
        num_labels = model.conditioning.num_labels
        if not num_labels:
            raise ConfigError(
                f"the auxiliary classifier needs a GAN with classes or clusters; "
                f"'{model.name}' has neither"
            )
        model.prepare_training(data, resume)

        def probe(classifier: nn.Module) -> None:
            logits = classifier(torch.zeros(2, *IMAGE_SHAPE, device=model.device))
            if tuple(logits.shape) != (2, num_labels):
                raise ValueError(f"it gave outputs of shape {tuple(logits.shape)}")

        self.classifier = build_task_network(
            ENCODERS, "classifier", self.classifier_spec, model.device, probe,
            out_features=num_labels,
        )  # fmt: skip

    def optimizer_groups(self, model: GenerativeModel) -> dict[str, Any]:
        if self.classifier is None:
            raise ConfigError("auxiliary classifier: call prepare() first")
        groups = model.optimizer_groups()
        return {
            "discriminator": groups["discriminator"],
            "classifier": self.classifier.parameters(),
            "generator": groups["generator"],
        }

    def optimizer_options(self, model: GenerativeModel, phase: str) -> dict[str, Any]:
        return {} if phase == "classifier" else model.optimizer_options(phase)

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """The GAN's own loss for its phases (plus the classification term for the
        generator); the classifier's cross-entropy on real images for its own."""
        if self.classifier is None:
            raise ConfigError("auxiliary classifier: call prepare() before loss()")
        if phase == "discriminator":
            return model.training_loss(images, labels, step, phase)
        gan: GAN = model
        if phase == "classifier":
            labels = gan.conditioning.training_labels(images, labels).long()
            logits = self.classifier(images * 2 - 1)
            return {
                "loss": F.cross_entropy(logits.float(), labels),
                "accuracy": (logits.detach().argmax(1) == labels).float().mean(),
            }
        if phase != "generator":
            raise ConfigError(
                "an auxiliary-classifier GAN trains in phases 'discriminator', 'classifier' "
                f"and 'generator', not '{phase}'"
            )
        fakes, fake_labels = gan.step_fakes(images, labels, step)
        out = gan.generator_loss(fakes, fake_labels)
        self.classifier.requires_grad_(False)  # trained on real images only
        try:
            with evaluating(self.classifier):
                logits = self.classifier(fakes)
        finally:
            self.classifier.requires_grad_(True)
        classification = F.cross_entropy(logits.float(), fake_labels.long())
        return {
            **out,
            "loss": out["loss"] + self.weight * classification,
            "adversarial": out["loss"].detach(),
            "classification": classification.detach(),
            "fake_accuracy": (logits.detach().argmax(1) == fake_labels).float().mean(),
        }


TRAINING_TASKS.register(AuxiliaryClassifier.name, AuxiliaryClassifier)
