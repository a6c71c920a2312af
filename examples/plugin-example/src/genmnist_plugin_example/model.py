"""``pixel-gaussian``: every pixel an independent Gaussian.

The simplest model that fits genmnist's contract: 784 learnable mean logits and 784
learnable log standard deviations, no interaction between pixels. Its samples are the
average digit plus per-pixel noise, which makes it a useful baseline and a short example
of what a plugin model has to provide:

* a config dataclass (a :class:`~genmnist.models.base.ModelConfig` subclass),
* :meth:`~genmnist.models.base.GenerativeModel.generate`, drawing all its randomness from
  the :class:`~genmnist.models.base.SampleNoise` it is given,
* :meth:`~genmnist.models.base.GenerativeModel.training_loss`, which the shared trainer
  calls, returning ``{"loss": ...}``,
* optionally, shipped weights under :attr:`pretrained_package`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from genmnist.errors import ConfigError
from genmnist.models.base import IMAGE_SHAPE, GenerativeModel, ModelConfig, SampleNoise


@dataclass
class PixelGaussianConfig(ModelConfig):
    """Config of :class:`PixelGaussian`.

    Attributes:
        min_log_std: Floor of each pixel's log standard deviation. Pixels that are always
            0 (the border) would otherwise shrink their deviation without bound and the
            likelihood would diverge; ``-5`` is a deviation of about 1/150.
        epochs: Default number of training epochs (the model converges in a few hundred
            steps).
        lr: Peak learning rate (large: the model has only 1,568 parameters).
    """

    min_log_std: float = -5.0
    epochs: int = 1
    lr: float = 0.05


class PixelGaussian(GenerativeModel):
    """Independent per-pixel Gaussian (784 means and deviations), an example plugin."""

    config_class = PixelGaussianConfig
    default_name = "pixel-gaussian"
    pretrained_package = "genmnist_plugin_example.pretrained"
    config: PixelGaussianConfig

    def __init__(self, config: PixelGaussianConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        if self.conditional:
            raise ConfigError("pixel-gaussian is unconditional: num_classes must be 0")
        self.mean_logits = nn.Parameter(torch.zeros(IMAGE_SHAPE))
        self.log_std = nn.Parameter(torch.zeros(IMAGE_SHAPE))

    def _log_std(self) -> torch.Tensor:
        return self.log_std.clamp(min=self.config.min_log_std)

    def generate(self, noise: SampleNoise, labels: torch.Tensor | None) -> torch.Tensor:
        mean = torch.sigmoid(self.mean_logits)
        return (mean + self._log_std().exp() * noise.randn(*IMAGE_SHAPE)).clamp(0, 1)

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        mean = torch.sigmoid(self.mean_logits)
        log_std = self._log_std()
        z = (images.float() - mean) * torch.exp(-log_std)
        per_pixel = 0.5 * math.log(2 * math.pi) + log_std + 0.5 * z.pow(2)
        nll = per_pixel.flatten(1).sum(1).mean()  # nats per image
        return {"loss": nll}
