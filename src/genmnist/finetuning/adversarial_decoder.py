"""Adversarial decoder tuning: sharpen a trained VAE's decoder against a discriminator.

A VAE's decoder is trained to output the mean of its likelihood, which is blurry where
the data is uncertain: the fine detail that tells similar classes apart (a coat's zip
and collar against a pullover's plain front) is averaged away. Adding a GAN loss on its
outputs (Larsen et al., 2016, "Autoencoding beyond pixels using a learned similarity
metric") puts that detail back. Here the encoder and the latent prior stay as trained,
so the codes, the prior fitted to them and the model's ELBO bookkeeping keep their
meaning; only the decoder moves, against a discriminator that sees the decoder's
reconstructions and its samples from the prior beside real images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from genmnist.errors import CheckpointError, ConfigError
from genmnist.losses import GAN_LOSSES, RECONSTRUCTION_LOSSES
from genmnist.models.base import IMAGE_SHAPE
from genmnist.nn import DISCRIMINATORS
from genmnist.training.task import (
    TRAINING_TASKS,
    TrainingTask,
    build_task_network,
    check_network_spec,
)

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel
    from genmnist.models.vae import VAE

#: VAE fields the tuned model shares with its base, since it starts from its weights.
SAME_NETWORK = (
    "encoder", "decoder", "hidden_dims", "latent_dim", "activation", "norm",
    "num_classes", "prior", "prior_components", "reconstruction",
)  # fmt: skip
#: The discriminator unless the recipe says otherwise: the DCGAN one with spectral norm,
#: which needs no other regulariser.
DEFAULT_DISCRIMINATOR = {"name": "conv", "hidden_dims": [64, 128], "spectral_norm": True}


class AdversarialDecoderTuning(TrainingTask):
    """Fine-tune the decoder of a trained VAE with its reconstruction loss plus
    ``weight`` times a GAN loss (hinge by default).

    The model being trained must have the base model's architecture (it starts from its
    weights); its encoder is frozen and kept in eval mode, and its prior is kept as the
    base fitted it (not refitted when training ends: the codes did not change). Each step, the
    discriminator sees a batch of real images against the decoder's reconstructions of
    them and ``prior_share`` as many images decoded from the prior at the model's
    temperature; then the decoder minimises the reconstruction loss plus the weighted
    GAN loss of those fakes.

    Args:
        base: A VAE's run folder, or the name of a shipped VAE (for the training dataset).
        weight: Weight of the GAN loss against the reconstruction loss (nats per image).
        prior_share: Images decoded from the prior per real image, in ``[0, 1]``.
        loss: A GAN objective in `genmnist.losses.GAN_LOSSES`.
        discriminator: The discriminator: ``name`` in `genmnist.nn.DISCRIMINATORS` and its
            keyword arguments (a class-conditional VAE's is conditioned on the labels).
    """

    name = "adversarial-decoder"

    def __init__(
        self,
        base: str,
        weight: float = 2.0,
        prior_share: float = 0.5,
        loss: str = "hinge",
        discriminator: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError("adversarial decoder tuning needs a base: a VAE folder or name")
        for field, value, top in (("weight", weight, math.inf), ("prior_share", prior_share, 1)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{field} must be a number, got {value!r}"[:200])
            if not (math.isfinite(value) and 0 <= value <= top):
                bounds = "0 or more" if top == math.inf else f"from 0 to {top}"
                raise ConfigError(f"{field} must be a finite number {bounds}, got {value}")
        if not isinstance(loss, str):
            raise ConfigError(f"loss must be the name of a GAN loss, got {loss!r}"[:200])
        self.objective = GAN_LOSSES.get(loss)
        spec = check_network_spec(
            DISCRIMINATORS,
            "discriminator",
            DEFAULT_DISCRIMINATOR if discriminator is None else discriminator,
        )
        self.base, self.weight, self.prior_share = base, float(weight), float(prior_share)
        self.loss_name, self.discriminator_spec = loss, spec
        self.discriminator: nn.Module | None = None
        self._fakes: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "weight": self.weight,
            "prior_share": self.prior_share,
            "loss": self.loss_name,
            "discriminator": self.discriminator_spec,
        }

    def networks(self) -> nn.Module | None:
        return self.discriminator

    def finish(self, model: GenerativeModel, data: InMemoryDataset) -> None:
        """Nothing: the encoder did not move, so the prior fitted to its codes still fits
        (a 1000-component mixture takes minutes to refit to the same result)."""

    def optimizer_groups(self, model: GenerativeModel) -> dict[str, Any]:
        if self.discriminator is None:
            raise ConfigError("adversarial decoder tuning: call prepare() first")
        return {
            "discriminator": self.discriminator.parameters(),
            "decoder": model.decoder.parameters(),
        }

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Check the model against the base, build the discriminator and, for a new run,
        start from the base's weights; freeze the encoder."""
        from genmnist.models import load
        from genmnist.models.vae import VAE

        if not isinstance(model, VAE):
            raise ConfigError(
                f"adversarial decoder tuning trains a VAE, not a {type(model).__name__}"
            )
        try:
            base = load(self.base, dataset=data.name)
        except CheckpointError as exc:
            raise CheckpointError(f"adversarial decoder tuning base: {exc}") from None
        if not isinstance(base, VAE):
            raise ConfigError(
                f"adversarial decoder tuning base '{self.base}' is a {type(base).__name__}, "
                "not a VAE"
            )
        if problem := model.config.first_difference(base.config, SAME_NETWORK):
            raise ConfigError(f"adversarial decoder tuning base '{self.base}': {problem}")
        model.prepare_training(data, resume)
        num_classes = model.config.num_classes

        def probe(discriminator: nn.Module) -> None:
            images = torch.zeros(2, *IMAGE_SHAPE, device=model.device)
            labels = torch.zeros(2, dtype=torch.long, device=model.device)
            logits = discriminator(images, labels if num_classes else None)
            if logits.numel() != 2:
                raise ValueError(f"it gave outputs of shape {tuple(logits.shape)}")

        self.discriminator = build_task_network(
            DISCRIMINATORS, "discriminator", self.discriminator_spec, model.device, probe,
            num_classes=num_classes,
        )  # fmt: skip
        if not resume:
            model.load_state_dict(base.state_dict())
        model.encoder.requires_grad_(False)

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """Discriminator phase: real images against the decoder's fakes (kept for the
        decoder phase of the same step). Decoder phase: reconstruction plus GAN loss."""
        if self.discriminator is None:
            raise ConfigError("adversarial decoder tuning: call prepare() before loss()")
        labels = labels if model.conditional else None
        if phase == "discriminator":
            fakes, logits, fake_labels = self._decode(model, images, labels)
            self._fakes = (step, fakes, logits, fake_labels)
            real = self.discriminator(images * 2 - 1, labels)
            fake = self.discriminator(fakes.detach() * 2 - 1, fake_labels)
            return {
                "loss": self.objective.discriminator(real, fake, 1.0),
                "real_accuracy": (real.detach() > 0).float().mean(),
                "fake_accuracy": (fake.detach() < 0).float().mean(),
            }
        if phase != "decoder":
            raise ConfigError(
                "adversarial decoder tuning trains in phases 'discriminator' and 'decoder', "
                f"not '{phase}'"
            )
        if self._fakes is not None and self._fakes[0] == step:
            _, fakes, logits, fake_labels = self._fakes
        else:  # called without the discriminator phase first
            fakes, logits, fake_labels = self._decode(model, images, labels)
        self._fakes = None
        self.discriminator.requires_grad_(False)  # no gradients for D in the decoder's step
        try:
            adversarial = self.objective.generator(self.discriminator(fakes * 2 - 1, fake_labels))
        finally:
            self.discriminator.requires_grad_(True)
        reconstruction = RECONSTRUCTION_LOSSES.get(model.config.reconstruction)(logits, images)
        return {
            "loss": reconstruction + self.weight * adversarial,
            "reconstruction": reconstruction.detach(),
            "adversarial": adversarial.detach(),
        }

    def _decode(self, model: VAE, images: torch.Tensor, labels: torch.Tensor | None):
        """Reconstructions of ``images`` (from posterior samples) and the share of images
        decoded from the prior: ``(fakes in [0, 1], reconstruction logits, fake labels)``."""
        model.encoder.eval()  # frozen: its BatchNorm statistics stay the base's
        with torch.no_grad():
            mean, logvar = model.encode(images, labels)
            codes = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        logits = model.decode_logits(codes, labels)
        fakes, fake_labels = [torch.sigmoid(logits.float())], labels
        drawn = round(self.prior_share * images.shape[0])
        if drawn:
            prior_labels = None if labels is None else labels[:drawn]
            prior_codes = model.prior.sample(
                _BatchNoise(drawn, images.device), model.config.temperature, prior_labels
            )
            fakes.append(model.decode(prior_codes, prior_labels))
            if labels is not None:
                fake_labels = torch.cat([labels, prior_labels])
        return torch.cat(fakes), logits, fake_labels


class _BatchNoise:
    """Noise for a batch drawn from the global generator (seeded per step by the
    trainer), with the interface a latent prior samples from."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = size, device

    def __len__(self) -> int:
        return self.size

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(self.size, *shape, device=self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(self.size, *shape, device=self.device)


TRAINING_TASKS.register(AdversarialDecoderTuning.name, AdversarialDecoderTuning)
