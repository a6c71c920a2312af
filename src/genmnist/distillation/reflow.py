"""Reflow (Liu et al., 2023, "Flow Straight and Fast: Learning to Generate and Transfer
Data with Rectified Flow"): a student flow model learns the straight path from each noise
``z`` to the image its teacher's ODE sampler draws from ``z``, so its own paths are nearly
straight and one or two Euler steps follow them.

The teacher's pairs ``(z, x)`` couple noise and data through the teacher's deterministic
sampler (with its guidance, if it has any), instead of the independent coupling that flow
matching trains on. Along a straight line from ``x`` to ``z`` the velocity ``z - x`` is
constant, so the loss at ``t = 1`` is exactly one-step distillation (Luhman & Luhman,
2021) and the loss at other times teaches the later Euler steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from genmnist.distillation.teachers import load_flow_model
from genmnist.errors import ConfigError
from genmnist.flow import FLOW_SAMPLERS, flow_times
from genmnist.models.flow import FlowMatching
from genmnist.training.task import TRAINING_TASKS, TrainingTask

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.models.base import GenerativeModel

#: Most pairs a run may ask for (each costs a full teacher sampling run; 784 floats each).
MAX_PAIRS = 1_000_000
#: Pairs the teacher draws at once.
PAIR_BATCH = 500


class Reflow(TrainingTask):
    """Train a flow-matching student on noise-image pairs drawn by its teacher.

    ``prepare`` draws ``pairs`` noise tensors (from ``seed``), labels for them (a
    class-conditional teacher's classes cycle; a self-conditioned teacher's clusters are
    drawn by their shares) and the teacher's samples from them, with the teacher's default
    sampler, steps and guidance; a resumed run draws the same pairs again. Each training
    batch then takes random pairs (the real images only set the batch size) and regresses
    the student's velocity on the pair's straight path at times from the student's
    ``time_distribution``.

    The student starts from the teacher's network (and clusters) and sees every label (no
    label dropout), so it learns the guided teacher and takes no guidance itself.

    Args:
        teacher: A flow model's folder or shipped name (for the training dataset).
        pairs: How many noise-image pairs the teacher draws.
        seed: Seed of the pairs' noise and labels.
    """

    name = "reflow"

    def __init__(self, teacher: str, pairs: int = 20_000, seed: int = 0) -> None:
        if not isinstance(teacher, str) or not teacher.strip():
            raise ConfigError("reflow needs a teacher: a flow model's folder or name")
        if isinstance(pairs, bool) or not isinstance(pairs, int) or not 1 <= pairs <= MAX_PAIRS:
            raise ConfigError(f"reflow pairs must be an integer in 1..{MAX_PAIRS}, got {pairs!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"reflow seed must be a non-negative integer, got {seed!r}")
        self.teacher_source = teacher
        self.pairs = pairs
        self.seed = seed
        self.noise: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "teacher": self.teacher_source, "pairs": self.pairs,
                "seed": self.seed}  # fmt: skip

    def prepare(self, model: GenerativeModel, data: InMemoryDataset, resume: bool) -> None:
        """Load the teacher, check that the student can learn from it, copy its network
        into the student (new runs) and draw the pairs."""
        if not isinstance(model, FlowMatching):
            raise ConfigError(f"reflow trains a flow model, not a {type(model).__name__}")
        if model.config.label_dropout != 0 and model.conditioning.num_labels:
            raise ConfigError(
                "a reflow student learns its teacher's guided paths for every label: "
                "set its label_dropout to 0"
            )
        teacher = load_flow_model(self.teacher_source, data.name, model, "reflow teacher")
        if not resume:
            model.unet.load_state_dict(teacher.unet.state_dict())
            model.conditioning.load_state_dict(teacher.conditioning.state_dict())
        self.noise, self.images, self.labels = draw_pairs(teacher, self.pairs, self.seed)

    def loss(self, model, images, labels, step: int, phase: str) -> dict[str, torch.Tensor]:
        """Flow matching on the teacher's pairs: the straight path's velocity ``z - x`` at
        times from the student's distribution."""
        if self.noise is None or self.images is None:
            raise ConfigError("reflow: call prepare() before loss()")
        device = images.device
        pick = torch.randint(len(self.noise), (images.shape[0],), device=self.noise.device)
        z, x = self.noise[pick].to(device), self.images[pick].to(device)
        cond = None if self.labels is None else self.labels[pick].to(device)
        t = model.time_distribution(x.shape[0], device)
        prediction = model.predict_velocity(model.path.interpolate(x, z, t), t, cond)
        return {"loss": torch.mean((prediction - model.path.velocity(x, z)) ** 2)}


def draw_pairs(
    teacher: FlowMatching, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``n`` noise tensors, the teacher's samples from them (in ``[-1, 1]``, on the
    teacher's device) and the labels it sampled them for (None: it takes no labels).

    Classes cycle ``0, 1, ...``; clusters are drawn by their share of the training set.
    The teacher samples with its default sampler, steps, time shift and guidance, in its
    sampling precision."""
    cfg = teacher.config
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 28, 28, generator=generator)
    conditioning = teacher.conditioning
    labels: torch.Tensor | None = None
    if cfg.num_classes:
        labels = torch.arange(n) % cfg.num_classes
    elif conditioning.num_labels:
        shares = conditioning.shares.float().cpu()
        labels = torch.multinomial(shares, n, replacement=True, generator=generator)
    sample_fn = FLOW_SAMPLERS.get(cfg.sampler)
    times = flow_times(cfg.sampling_steps, cfg.time_shift)
    device = teacher.device
    bf16 = teacher.default_sampling_precision() == "bf16"
    images = torch.empty_like(noise)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for start in range(0, n, PAIR_BATCH):
            stop = min(n, start + PAIR_BATCH)
            batch_labels = None if labels is None else labels[start:stop].to(device)
            velocity = teacher.velocity(batch_labels)
            x = sample_fn(velocity, noise[start:stop].to(device), times)
            images[start:stop] = x.float().clamp(-1, 1).cpu()
    return (noise.to(device), images.to(device), None if labels is None else labels.to(device))


TRAINING_TASKS.register(Reflow.name, Reflow)
