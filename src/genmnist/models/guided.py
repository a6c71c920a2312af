"""Classifier-free guidance for models whose network takes labels (classes or clusters):
the part a diffusion model and a flow model share.

A model mixes `LabelGuidance` in beside `GenerativeModel` and holds ``conditioning`` (a
`genmnist.conditioning` component) and a config with ``label_dropout``,
``guidance_scale`` and ``guidance_interval``; `guided` then wraps any prediction of its
network (a clean-data estimate, a velocity) for sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from genmnist.conditioning import ConditionedModel
from genmnist.diffusion.guidance import check_interval, check_scale, guidance_problem, guide
from genmnist.errors import ConfigError

Prediction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LabelGuidance(ConditionedModel):
    """Mixin: classifier-free guidance, limited to a noise interval if asked, for a model
    with a ``conditioning`` and guidance defaults in its config."""

    def check_guidance_defaults(self) -> None:
        """Raise `ConfigError` unless the config's label dropout, guidance scale and
        interval are usable (called by the model's constructor)."""
        cfg = self.config
        if not 0.0 <= cfg.label_dropout < 1.0:
            raise ConfigError("label_dropout must be in [0, 1)")
        check_scale(cfg.guidance_scale)
        if cfg.guidance_interval is not None:
            check_interval(cfg.guidance_interval)

    def describe_label_input(
        self, inputs: dict[str, torch.Tensor], doc: dict[str, str], prediction: str
    ) -> None:
        """Add the ``labels`` input of an exported network, when it takes labels, to its
        example ``inputs`` and their ``doc`` (``prediction``: what the null label gives)."""
        if not self.conditioning.num_labels:
            return
        null = self.conditioning.null_label
        inputs["labels"] = torch.tensor([0, null])
        doc["labels"] = (
            f"int64 (batch,): labels 0..{null - 1} (see 'conditioning'); {null} is the "
            f"null label, the unconditional {prediction} classifier-free guidance needs"
        )

    @property
    def guidance_problem(self) -> str | None:
        """Why this model takes no guidance scale (None when it does), worded to follow
        its name: guidance needs labels (classes or clusters) and an unconditional
        prediction learned through label dropout."""
        return guidance_problem(self.conditioning.num_labels, self.config.label_dropout)

    def guided(
        self,
        predict: Callable[..., torch.Tensor],
        labels: torch.Tensor | None,
        guidance: float | None,
        guidance_interval: tuple[float, float] | None,
        noise_levels,
    ) -> Prediction:
        """``predict(x_t, t, labels)`` for the network's ``labels``, with classifier-free
        guidance at scale ``guidance`` limited to ``guidance_interval`` (log-SNR, from
        ``noise_levels``; defaults: the config's) when the model takes guidance.

        Raises:
            ConfigError: guidance is asked of a model that takes none, or its values are
                not usable.
        """
        problem = self.guidance_problem
        if problem is not None:
            if guidance is not None or guidance_interval is not None:
                raise ConfigError(f"model '{self.name}' {problem}: it takes no guidance")
            return partial(predict, labels=labels)
        cfg = self.config
        scale = cfg.guidance_scale if guidance is None else guidance
        interval = cfg.guidance_interval if guidance_interval is None else guidance_interval
        return guide(predict, labels, self.conditioning.null_label, scale, interval, noise_levels)
