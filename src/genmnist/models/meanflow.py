"""MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative Modeling"): a flow
model whose network predicts the *average* velocity ``u(z_t, r, t)`` over a whole step
from ``t`` down to ``r``, so one step ``z_r = z_t - (t - r) u`` lands where the ODE would,
however long the step.

Training needs no teacher: the average velocity obeys the MeanFlow identity

    u(z_t, r, t) = v(z_t, t) - (t - r) * d/dt u(z_t, r, t),

whose total derivative ``d/dt u = v . grad_z u + du/dt`` is one Jacobian-vector product
(`torch.func.jvp`). The network regresses the right-hand side (held fixed) with ``v`` the
path's velocity ``eps - x``, on pairs of times where ``r < t`` for a share of the batch
and ``r = t`` (plain flow matching) for the rest. `genmnist.distillation.MeanFlowDistillation`
trains the same network with a flow teacher's velocity as ``v`` instead.

The network is the flow models' U-Net with a second time embedding for the step length
``t - r`` that starts at zero, so a flow model's weights load into it as its ``r = t``
behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

import torch
from torch.func import jvp

from genmnist.conditioning import drop_labels
from genmnist.errors import ConfigError
from genmnist.flow import FLOW_SAMPLERS, flow_times, sample_flow
from genmnist.models.base import SampleNoise
from genmnist.models.flow import FlowConfig, FlowMatching
from genmnist.registry import MODELS

#: ``average_velocity(z_t, r, t) -> u``: the average velocity from ``t`` down to ``r``.
AverageVelocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MeanFlowConfig(FlowConfig):
    """A `FlowConfig` for MeanFlow.

    Attributes:
        interval_share: Share of training samples with a step ``r < t`` (the rest have
            ``r = t`` and learn the instantaneous velocity, as flow matching does).
        adaptive_loss_power: The loss of each sample is divided by its own squared error
            to this power (held fixed; MeanFlow's adaptive weighting, 0: plain squared
            error), which keeps the few large errors of long steps from dominating.
        sampler: ``mean`` (steps of the average velocity) or an ODE sampler in
            `genmnist.flow.FLOW_SAMPLERS` over the instantaneous velocity ``u(z, t, t)``.
    """

    interval_share: float = 0.5
    adaptive_loss_power: float = 1.0
    sampler: str = "mean"
    sampling_steps: int = 1
    label_dropout: float = 0.0


class MeanFlow(FlowMatching):
    """MeanFlow: the flow U-Net with a step-length embedding, trained on the MeanFlow
    identity, sampled in one or a few average-velocity steps."""

    config_class = MeanFlowConfig
    default_name = "meanflow"
    interval_embedding = True
    config: MeanFlowConfig

    def __init__(self, config: MeanFlowConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg = self.config
        if not 0.0 <= cfg.interval_share <= 1.0:
            raise ConfigError(f"interval_share must be in [0, 1], got {cfg.interval_share!r}")
        if not 0.0 <= cfg.adaptive_loss_power <= 2.0:
            raise ConfigError(
                f"adaptive_loss_power must be in [0, 2], got {cfg.adaptive_loss_power!r}"
            )

    @staticmethod
    def check_sampler(name: str) -> None:
        if name != "mean":
            FLOW_SAMPLERS.get(name)

    # ----------------------------------------------------------------- network
    def predict_average_velocity(
        self,
        z: torch.Tensor,
        r: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's average velocity from times ``t`` down to ``r`` (both ``(b,)``
        in ``[0, 1]``, ``r <= t``) at ``z_t``."""
        scale = self.path.time_scale
        return self.unet(z, t * scale, labels, interval=(t - r) * scale).float()

    def predict_velocity(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The instantaneous velocity ``u(x_t, t, t)``, which ODE samplers integrate."""
        return self.predict_average_velocity(x, t, t, labels)

    # ----------------------------------------------------------------- training
    def training_times(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, t)``: two draws of the time distribution, ordered, with ``r = t`` for
        all but `MeanFlowConfig.interval_share` of them."""
        a = self.time_distribution(n, device)
        b = self.time_distribution(n, device)
        t, r = torch.maximum(a, b), torch.minimum(a, b)
        keep = torch.rand(n, device=device) < self.config.interval_share
        return torch.where(keep, r, t), t

    def mean_flow_loss(
        self,
        z: torch.Tensor,
        r: torch.Tensor,
        t: torch.Tensor,
        velocity: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """MeanFlow's regression at ``z_t`` for the velocity ``velocity`` there: the
        network's ``u(z_t, r, t)`` against ``v - (t - r) du/dt``, the total derivative
        taken along ``(v, 1)`` by one Jacobian-vector product in float32 without
        gradients (the target is held fixed)."""
        network = partial(self._average_velocity_of, labels=labels, r=r)
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            _, dudt = jvp(network, (z.float(), t.float()), (velocity.float(), torch.ones_like(t)))
        target = velocity - (t - r)[:, None, None, None] * dudt
        error = ((self.predict_average_velocity(z, r, t, labels) - target) ** 2).flatten(1)
        per_sample = error.mean(dim=1)
        power = self.config.adaptive_loss_power
        if power:
            per_sample = per_sample / (per_sample.detach() + 1e-3) ** power
        return {"loss": per_sample.mean(), "mse": error.mean().detach()}

    def _average_velocity_of(self, z, t, labels=None, *, r):
        """`predict_average_velocity` in the ``(z, t, labels)`` form guidance wraps; ``r``
        a float is the same end time for the whole (possibly doubled) batch."""
        if isinstance(r, float):
            r = torch.full_like(t, r)
        return self.predict_average_velocity(z, r, t, labels)

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        x = images * 2 - 1
        eps = torch.randn_like(x)
        r, t = self.training_times(x.shape[0], x.device)
        cond = self.conditioning.training_labels(images, labels)
        cond = drop_labels(cond, self.conditioning.null_label, self.config.label_dropout)
        z = self.path.interpolate(x, eps, t)
        return self.mean_flow_loss(z, r, t, self.path.velocity(x, eps), cond)

    # ----------------------------------------------------------------- sampling
    def generate(
        self,
        noise: SampleNoise,
        labels: torch.Tensor | None,
        sampler: str | None = None,
        steps: int | None = None,
        time_shift: float | None = None,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Sample one batch: with the ``mean`` sampler, one average-velocity step per
        interval of the sampling times (classifier-free guidance, when the model takes
        it, combines average velocities); with an ODE sampler, as a flow model."""
        cfg = self.config
        name = cfg.sampler if sampler is None else sampler
        if name != "mean":
            return super().generate(
                noise, labels, name, steps, time_shift, guidance, guidance_interval, callback
            )
        labels = self.conditioning.sampling_labels(noise, labels)
        shift = cfg.time_shift if time_shift is None else time_shift
        times = flow_times(cfg.sampling_steps if steps is None else steps, shift)

        def average_velocity(z, r, t):
            step = self.guided(
                partial(self._average_velocity_of, r=float(r[0])), labels, guidance,
                guidance_interval, self.path,
            )  # fmt: skip
            return step(z, t)

        return sample_flow(sample_mean_flow, average_velocity, noise, times, callback)


def sample_mean_flow(
    average_velocity: AverageVelocity, x: torch.Tensor, times: torch.Tensor, callback=None
) -> torch.Tensor:
    """Steps ``x_r = x_t - (t - r) u(x_t, r, t)`` between consecutive ``times``; the
    clean estimate reported after each step is a jump over the rest, ``u(x_r, 0, r)``
    being one more evaluation, so it reports the step's own end point instead."""
    for i, (t, r) in enumerate(pairwise(times.tolist())):
        t_b = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        r_b = torch.full_like(t_b, r)
        x = x - (t - r) * average_velocity(x, r_b, t_b)
        if callback is not None:
            callback(i, x, x)
    return x


MODELS.register(
    "meanflow",
    MeanFlow,
    description="MeanFlow: a flow U-Net that predicts the average velocity over a step, "
    "sampled in one step",
)
