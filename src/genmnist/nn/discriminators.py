"""Discriminators (GAN critics): images ``(b, 1, 28, 28)`` (and labels) to logits ``(b,)``.

Both register in `DISCRIMINATORS` and share one signature, so a GAN config names
its discriminator (``mlp`` or ``conv``) the way it names its generator in
`genmnist.nn.DECODERS`. Options common to both:

* LeakyReLU (slope 0.2) by default, optional dropout after each hidden layer;
* optional spectral normalisation (Miyato et al., 2018) of every weight, through
  `torch.nn.utils.parametrizations.spectral_norm`;
* an optional minibatch standard deviation feature (Karras et al., 2018) before the
  head, which shows the discriminator how varied a batch is and so fights collapse;
* class conditioning by ``projection`` (Miyato & Koyama, 2018: the logit gets
  ``<embed(y), features>``) or ``embedding`` (a learned label embedding enters with the
  input: appended to the flattened image for the MLP, as an extra image channel for
  the convolutional network).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genmnist.errors import ConfigError
from genmnist.nn.layers import ACTIVATIONS, NORMS, MinibatchStd, check_rate, check_widths
from genmnist.registry import Registry

#: Discriminator classes by name (``mlp``, ``conv``).
DISCRIMINATORS: Registry[type[nn.Module]] = Registry("discriminator")

#: Ways a discriminator can use class labels.
CONDITIONINGS = ("projection", "embedding")
#: Weight initialisations: DCGAN's N(0, 0.02), or PyTorch's default for each layer.
INITS = ("dcgan", "default")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al., 2016) of one layer, for ``model.apply``:
    weights ~ N(0, 0.02), normalisation scales ~ N(1, 0.02), zero biases."""
    if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def initialise(module: nn.Module, init: str) -> nn.Module:
    """Apply the initialisation named ``init`` (see `INITS`) to ``module``."""
    if init not in INITS:
        raise ConfigError(f"unknown init '{init}'; choose from {', '.join(INITS)}")
    if init == "dcgan":
        module.apply(dcgan_init)
    return module


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise the weight of every linear, convolution and embedding layer
    in ``module`` (in place); returns ``module``."""
    for layer in list(module.modules()):
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.Embedding):
            _spectral_norm(layer)
    return module


class _Discriminator(nn.Module):
    """Shared conditioning head: ``features -> logit`` plus the label terms."""

    def _setup_conditioning(
        self, num_classes: int, conditioning: str, input_size: int, feature_size: int
    ) -> int:
        """Create the label layers; returns how many extra input values the body takes."""
        if num_classes < 0:
            raise ConfigError("num_classes must be >= 0")
        if conditioning not in CONDITIONINGS:
            raise ConfigError(
                f"unknown conditioning '{conditioning}'; choose from {', '.join(CONDITIONINGS)}"
            )
        self.num_classes = num_classes
        self.conditioning = conditioning if num_classes > 0 else "none"
        self.input_embedding = self.projection = None
        if self.conditioning == "embedding":
            self.input_embedding = nn.Embedding(num_classes, input_size)
            return input_size
        if self.conditioning == "projection":
            self.projection = nn.Embedding(num_classes, feature_size)
            nn.init.normal_(self.projection.weight, std=0.02)
        return 0

    def _check_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None
        if labels is None:
            raise ConfigError("this discriminator is class-conditional: labels are required")
        return labels.long()

    def _logit(self, features: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        logit = self.head(features).squeeze(1)
        if self.projection is not None:
            logit = logit + (self.projection(labels) * features).sum(1)
        return logit


@DISCRIMINATORS.register("mlp")
class MLPDiscriminator(_Discriminator):
    """Flatten the image, then fully connected layers to one logit.

    Args:
        hidden_dims: Widths of the hidden layers, e.g. ``(512, 256)``.
        num_classes: Number of class labels (0: unconditional).
        conditioning: ``projection`` or ``embedding`` (used when ``num_classes > 0``).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Accepted so all discriminators share one signature; MLPs use none.
        spectral_norm: Spectrally normalise every weight.
        dropout: Dropout probability after each hidden layer.
        init: ``dcgan`` (weights ~ N(0, 0.02)) or ``default`` (PyTorch's initialisation).
        minibatch_std: Append the batch's standard deviation as one more feature
            (channel) before the head.
        image_shape: ``(channels, height, width)`` of the input.
    """

    def __init__(
        self,
        hidden_dims: tuple[int, ...] = (512, 256),
        num_classes: int = 0,
        conditioning: str = "projection",
        activation: str = "leaky_relu",
        norm: str = "none",
        spectral_norm: bool = False,
        dropout: float = 0.0,
        init: str = "dcgan",
        minibatch_std: bool = False,
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        if not hidden_dims:
            raise ConfigError("an MLP discriminator needs at least one hidden layer")
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        check_rate("dropout", dropout)
        c, h, w = image_shape
        extra = self._setup_conditioning(
            num_classes, conditioning, c * h * w, hidden_dims[-1] + int(minibatch_std)
        )
        layers: list[nn.Module] = []
        width = c * h * w + extra
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), ACTIVATIONS.create(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        if minibatch_std:
            layers.append(MinibatchStd())
            width += 1
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        initialise(self, init)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self._check_labels(labels)
        x = rearrange(images, "b c h w -> b (c h w)")
        if self.input_embedding is not None:
            x = torch.cat([x, self.input_embedding(labels).to(x.dtype)], dim=1)
        return self._logit(self.body(x), labels)


@DISCRIMINATORS.register("conv")
class ConvDiscriminator(_Discriminator):
    """DCGAN discriminator: 4x4 stride-2 convolutions (28 -> 14 -> 7 with two layers) with
    LeakyReLU, normalisation after all but the first, then a linear layer from the
    flattened features to one logit.

    Args:
        hidden_dims: Channels of each convolution, e.g. ``(64, 128)``.
        num_classes: Number of class labels (0: unconditional).
        conditioning: ``projection`` or ``embedding`` (used when ``num_classes > 0``).
        activation: Name in `genmnist.nn.layers.ACTIVATIONS`.
        norm: Name in `genmnist.nn.layers.NORMS`, applied after every convolution
            but the first (as in DCGAN). ``none`` is the usual choice with spectral norm.
        spectral_norm: Spectrally normalise every weight.
        dropout: Dropout probability after each convolution block.
        init: ``dcgan`` (weights ~ N(0, 0.02)) or ``default`` (PyTorch's initialisation).
        minibatch_std: Append the batch's standard deviation as one more feature
            (channel) before the head.
        image_shape: ``(channels, height, width)`` of the input (square images).
    """

    def __init__(
        self,
        hidden_dims: tuple[int, ...] = (64, 128),
        num_classes: int = 0,
        conditioning: str = "projection",
        activation: str = "leaky_relu",
        norm: str = "none",
        spectral_norm: bool = False,
        dropout: float = 0.0,
        init: str = "dcgan",
        minibatch_std: bool = False,
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        if not hidden_dims:
            raise ConfigError("a conv discriminator needs at least one convolution")
        hidden_dims = check_widths("hidden_dims", hidden_dims)
        check_rate("dropout", dropout)
        channels, size, _ = image_shape
        self.image_shape = tuple(image_shape)
        final = size
        for _ in hidden_dims:
            final = (final + 2 - 4) // 2 + 1  # 4x4, stride 2, padding 1: 28 -> 14 -> 7 -> 3
        if final < 1:
            raise ConfigError(f"{len(hidden_dims)} stride-2 layers shrink {size} pixels to 0")
        features = (hidden_dims[-1] + int(minibatch_std)) * final * final
        extra = self._setup_conditioning(num_classes, conditioning, size * size, features)
        layers: list[nn.Module] = []
        channels += 1 if extra else 0
        for i, width in enumerate(hidden_dims):
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1))
            if i > 0:
                layers.append(NORMS.create(norm, channels=width))
            layers.append(ACTIVATIONS.create(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            channels = width
        if minibatch_std:
            layers.append(MinibatchStd())
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, 1)
        initialise(self, init)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = self._check_labels(labels)
        x = images
        if self.input_embedding is not None:
            _, h, w = self.image_shape
            plane = self.input_embedding(labels).to(x.dtype)
            x = torch.cat([x, rearrange(plane, "b (h w) -> b 1 h w", h=h, w=w)], dim=1)
        features = rearrange(self.body(x), "b c h w -> b (c h w)")
        return self._logit(features, labels)
