"""ODE samplers for flow matching, as plain functions with one signature.

Every sampler is:

    sampler(velocity, x, times, callback=None) -> x_0

* ``velocity(x_t, t) -> v``: the model's velocity at per-sample times ``t`` (a ``(b,)``
  float tensor in ``[0, 1]``). Guidance is folded into it (the wrappers in
  `genmnist.diffusion.guidance` combine velocities as they combine clean-data estimates:
  at a fixed ``x_t`` one is an affine function of the other), so samplers know nothing
  about the network.
* ``x``: the starting noise at ``times[0]`` (standard normal at ``t = 1``).
* ``times``: the descending times to visit, ending at 0 (`flow_times`).
* ``callback(i, x_t, x0_hat)``: called after each step, e.g. to animate the trajectory.

The fixed-step samplers cost one (``euler``) or two (``midpoint``, ``heun``) velocity
evaluations per step; ``adaptive`` picks its own steps to meet a tolerance. Samplers
register by name in `FLOW_SAMPLERS`; adding one is writing one such function.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch

from genmnist.errors import ConfigError, SamplingError
from genmnist.flow.path import LinearPath
from genmnist.registry import Registry
from genmnist.values import whole_number

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None

#: Flow ODE samplers by name: ``euler``, ``midpoint``, ``heun``, ``adaptive``.
FLOW_SAMPLERS: Registry = Registry("flow sampler")

#: Most steps a flow sampler takes (the adaptive one included).
MAX_STEPS = 1000
#: Where the adaptive sampler stops integrating before it jumps to the clean estimate
#: ``x - t v``: its stages must not evaluate the network at ``t = 0`` (see `sample_heun`).
ADAPTIVE_END = 1e-3


def flow_times(steps: int, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` descending times from 1 to 0 for a fixed-step sampler.

    Args:
        steps: Number of steps (1..`MAX_STEPS`).
        shift: Evenly spaced times ``u`` are mapped to ``shift * u / (1 + (shift - 1) * u)``
            (Esser et al., 2024): above 1 the steps crowd toward the noise end, below 1
            toward the data end; 1 keeps them even.

    Raises:
        ConfigError: ``steps`` or ``shift`` is out of range.
    """
    steps = whole_number("steps", steps)
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if not isinstance(shift, int | float) or not 0 < shift < float("inf"):
        raise ConfigError(f"time_shift must be a positive finite number, got {shift!r}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * u / (1 + (shift - 1) * u)


def _at(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)


def _report(callback: Callback, i: int, x: torch.Tensor, t: float, v: torch.Tensor) -> None:
    if callback is not None:
        callback(i, x, LinearPath.to_x0(x, _at(t, x), v))


@FLOW_SAMPLERS.register("euler")
def sample_euler(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback=None):
    """Euler's method: ``x += (t_next - t) * v(x, t)``, one evaluation per step. On a
    straight path it is exact; on a learned one it needs the most steps."""
    times = times.tolist()
    for i, (t, t_next) in enumerate(pairwise(times)):
        v = velocity(x, _at(t, x))
        _report(callback, i, x, t, v)
        x = x + (t_next - t) * v
    return x


@FLOW_SAMPLERS.register("midpoint")
def sample_midpoint(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback=None):
    """The explicit midpoint method (second order): the velocity half a step ahead moves
    the whole step. Two evaluations per step."""
    times = times.tolist()
    for i, (t, t_next) in enumerate(pairwise(times)):
        h = t_next - t
        v = velocity(x, _at(t, x))
        _report(callback, i, x, t, v)
        x = x + h * velocity(x + h / 2 * v, _at(t + h / 2, x))
    return x


@FLOW_SAMPLERS.register("heun")
def sample_heun(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback=None):
    """Heun's method (second order): an Euler step, then the average of the velocities at
    both ends. Two evaluations per step, but the last: at ``t = 0`` the network sees clean
    data, where the learned velocity is not the one the trajectory arrives with (measured
    on the shipped ``flow``: FID 41 with that evaluation, 4 steps), so the last step stays
    an Euler step, as in Karras et al. (2022)."""
    times = times.tolist()
    for i, (t, t_next) in enumerate(pairwise(times)):
        h = t_next - t
        v = velocity(x, _at(t, x))
        _report(callback, i, x, t, v)
        correction = velocity(x + h * v, _at(t_next, x)) if t_next > 0 else v  # see above
        x = x + h / 2 * (v + correction)
    return x


# Dormand & Prince (1980) RK5(4) tableau: fifth-order solution, fourth-order error estimate.
_DP_NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@FLOW_SAMPLERS.register("adaptive")
def sample_adaptive(
    velocity: Velocity,
    x: torch.Tensor,
    times: torch.Tensor,
    callback=None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
):
    """Dormand–Prince RK5(4) with adaptive step size (the ``dopri5`` of ODE libraries):
    each step is accepted when its error estimate is within ``atol + rtol * |x|`` (RMS over
    the batch), and the next step size follows the error. Six evaluations per accepted
    step (the last stage is reused). Only ``times[0]`` and ``times[-1]`` are used; the
    first step is as long as the first of ``times``. It integrates down to `ADAPTIVE_END`
    and then jumps to the clean estimate that the last velocity implies.

    Raises:
        SamplingError: the tolerance needs more than `MAX_STEPS` steps (rejected ones
            included).
    """
    start, end = float(times[0]), max(float(times[-1]), ADAPTIVE_END)
    h = float(times[1] - times[0])
    t, accepted, v = start, 0, velocity(x, _at(start, x))
    for _attempt in range(MAX_STEPS):
        if t - end <= 1e-12:  # jump the last ADAPTIVE_END to the clean estimate
            return LinearPath.to_x0(x, _at(t, x), v) if float(times[-1]) < end else x
        h = max(h, end - t)  # h < 0: time runs backward
        stages = [v]
        for node, weights in zip(_DP_NODES[1:], _DP_STAGES[1:], strict=True):
            state = x + h * sum(w * k for w, k in zip(weights, stages, strict=False) if w)
            stages.append(velocity(state, _at(t + node * h, x)))
        # The last stage was evaluated at the fifth-order solution (reused next step).
        error = h * sum(e * k for e, k in zip(_DP_ERROR, stages, strict=True) if e)
        scale = atol + rtol * torch.maximum(x.abs(), state.abs())
        ratio = float((error / scale).pow(2).mean().sqrt())
        if ratio <= 1.0:
            _report(callback, accepted, x, t, v)
            t, x, v = t + h, state, stages[-1]
            accepted += 1
        factor = 0.9 * ratio ** (-1 / 5) if ratio > 0 else 5.0
        h *= min(5.0, max(0.2, factor))
    raise SamplingError(
        f"the adaptive sampler took more than {MAX_STEPS} steps; loosen its tolerance or "
        "use a fixed-step sampler"
    )


def sample_flow(
    sample_fn, velocity: Velocity, noise, times: torch.Tensor, callback=None
) -> torch.Tensor:
    """Draw ``x_1`` from ``noise`` (a `SampleNoise`), run the sampler ``sample_fn`` over
    ``velocity`` (which works in ``[-1, 1]``) and return images in ``[0, 1]``;
    ``callback(i, x_t, x0_hat)`` sees ``[0, 1]`` images too."""

    def report(i: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        callback(i, ((x_t + 1) / 2).clamp(0, 1), ((x0 + 1) / 2).clamp(0, 1))

    x = noise.randn(1, 28, 28)
    x0 = sample_fn(velocity, x, times, report if callback else None)
    return ((x0 + 1) / 2).clamp(0, 1)
