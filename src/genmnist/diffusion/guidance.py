"""Guidance as wrappers around denoisers.

A denoiser is ``denoise(x_t, t) -> x0_hat`` (see `genmnist.diffusion.samplers`). Each
guidance method here takes one or two denoisers and returns a new one, so it composes
outside the model, in any order, and samplers never know it is there:

* `classifier_free_guidance`: a conditional predictor against its own unconditional
  (null-label) prediction (Ho & Salimans, 2022).
* `autoguidance`: a model against a weaker version of itself (Karras et al., 2024).
* `limited_interval`: any guided denoiser, but only for noise levels inside an interval,
  the plain one elsewhere (Kynkäänniemi et al., 2024): guidance at high noise is what
  drops modes, and at low noise it does nothing useful.

The same wrappers guide a flow model's velocity ``v = f(x_t, t)``: at a fixed ``x_t`` a
velocity is an affine function of the clean-data estimate, so mixing velocities is
mixing estimates. `guide` builds what a model with labels usually needs.

Adding a guidance method is writing one such function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from genmnist.errors import ConfigError

if TYPE_CHECKING:
    from genmnist.diffusion.schedules import NoiseSchedule
    from genmnist.flow.path import LinearPath

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LabelledPredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


#: Largest guidance scale magnitude accepted: useful scales are below 10, and beyond this
#: the extrapolation overflows float32 to NaN or inf images.
MAX_SCALE = 1000.0


def check_scale(scale: float) -> float:
    """Return ``scale`` as a float if it is a finite number of magnitude at most
    `MAX_SCALE`, else raise `ConfigError`.

    Guidance extrapolates, so an infinite, NaN or huge scale turns every image into NaN."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ConfigError(f"guidance scale must be a finite number, got {scale!r}")
    if abs(scale) > MAX_SCALE:
        raise ConfigError(
            f"guidance scale must be in -{MAX_SCALE:g}..{MAX_SCALE:g} (useful ones are below "
            f"10), got {scale!r}"
        )
    return float(scale)


def classifier_free_guidance(
    predict: LabelledPredictor, labels: torch.Tensor, null_label: int, scale: float
) -> Denoiser:
    """Wrap a conditional data predictor ``predict(x, t, labels)`` into a denoiser with
    classifier-free guidance (Ho & Salimans, 2022):
    ``x0 = x0_uncond + scale * (x0_cond - x0_uncond)``.

    ``scale=1`` is plain conditional sampling (one model call per step), ``scale=0``
    unconditional; larger values trade diversity for fidelity to the label. The two
    predictions share one batched model call.
    """
    scale = check_scale(scale)
    if scale == 1.0:
        return lambda x, t: predict(x, t, labels)
    null = torch.full_like(labels, null_label)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = predict(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return denoise


def autoguidance(predict: Denoiser, predict_guide: Denoiser, scale: float) -> Denoiser:
    """Wrap two data predictors ``predict(x, t)`` into a denoiser with autoguidance
    (Karras et al., 2024): ``x0 = x0_guide + scale * (x0 - x0_guide)``, where the guide is
    a weaker version of the same model (smaller, trained for fewer steps).

    ``scale=1`` is the model alone (one model call per step); larger values move samples
    away from the guide's errors.
    """
    scale = check_scale(scale)
    if scale == 1.0:
        return predict

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        guide = predict_guide(x, t)
        return guide + scale * (predict(x, t) - guide)

    return denoise


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    """Return ``(low, high)`` as floats if they are numbers with ``low <= high`` (either
    may be infinite, to leave that side open), else raise `ConfigError`."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(
            f"a guidance interval is two log-SNR values LOW HIGH, got {interval!r}"
        ) from None
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ConfigError(
            f"a guidance interval needs LOW <= HIGH (log-SNR, numbers), got {low} {high}"
        )
    return low, high


def limited_interval(
    guided: Denoiser,
    plain: Denoiser,
    noise_levels: NoiseSchedule | LinearPath,
    interval: tuple[float, float],
) -> Denoiser:
    """Use ``guided`` only where the noise level lies in ``interval``, ``plain`` elsewhere
    (Kynkäänniemi et al., 2024, "Applying Guidance in a Limited Interval Improves Sample
    and Distribution Quality in Diffusion Models").

    Args:
        guided: The guided denoiser (e.g. from `classifier_free_guidance`).
        plain: The same model unguided (the conditional prediction alone).
        noise_levels: Gives each step's log signal-to-noise ratio: a diffusion model's
            `NoiseSchedule`, or a flow's `genmnist.flow.LinearPath`.
        interval: ``(low, high)`` in log-SNR, ``log(alpha_t^2 / sigma_t^2)``: guidance
            applies where ``low <= log_snr(t) <= high``. High noise is low log-SNR; the
            interval Kynkäänniemi et al. found best for EDM2, sigma in (0.28, 5.42], is
            about ``(-3.4, 2.6)``.

    Each call evaluates only the denoiser(s) some sample of the batch needs, so steps
    outside the interval cost one model call, not two.
    """
    low, high = check_interval(interval)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_snr = noise_levels.log_snr(t.cpu())
        inside = ((log_snr >= low) & (log_snr <= high)).to(x.device)
        if bool(inside.all()):
            return guided(x, t)
        if not bool(inside.any()):
            return plain(x, t)
        return torch.where(inside[:, None, None, None], guided(x, t), plain(x, t))

    return denoise


def guidance_problem(num_labels: int, label_dropout: float) -> str | None:
    """Why a network with ``num_labels`` labels (classes or clusters), trained with
    ``label_dropout``, takes no classifier-free guidance (None when it does), worded to
    follow the model's name: guidance needs labels and an unconditional prediction learned
    through label dropout."""
    if num_labels == 0:
        return "is unconditional, with neither classes nor clusters to guide toward"
    if label_dropout == 0:
        return (
            "was trained without label dropout (as a guidance-distilled model is), so it "
            "has no unconditional prediction to guide against"
        )
    return None


def guide(
    predict: LabelledPredictor,
    labels: torch.Tensor,
    null_label: int,
    scale: float,
    interval: tuple[float, float] | None,
    noise_levels: NoiseSchedule | LinearPath,
) -> Denoiser:
    """Classifier-free guidance of ``predict(x, t, labels)`` at ``scale``, limited to the
    log-SNR ``interval`` when one is given (see `limited_interval`)."""
    guided = classifier_free_guidance(predict, labels, null_label, scale)
    if interval is None or scale == 1.0:
        return guided
    plain = partial(predict, labels=labels)
    return limited_interval(guided, plain, noise_levels, interval)
