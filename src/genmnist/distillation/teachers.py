"""Loading the models a distillation or fine-tuning task starts from or learns from,
with one set of checks."""

from __future__ import annotations

from typing import TypeVar

from genmnist.errors import CheckpointError, ConfigError
from genmnist.models.base import GenerativeModel
from genmnist.models.flow import FlowMatching

#: Network fields a student shares with the model whose weights it starts from.
SAME_NETWORK = ("channels", "blocks_per_level", "attention_levels", "num_classes", "clusters")

M = TypeVar("M", bound=GenerativeModel)


def load_flow_model(source: str, dataset: str, student: GenerativeModel, role: str) -> FlowMatching:
    """The flow model at ``source`` (a folder or shipped name for ``dataset``), frozen in
    eval mode on the student's device, after checking that its network matches the
    student's.

    Raises:
        CheckpointError: it cannot be loaded (the message starts with ``role``).
        ConfigError: it is not a flow model, or its network differs from the student's.
    """
    return load_frozen_model(source, dataset, student, role, FlowMatching, "flow model")


def load_frozen_model(
    source: str,
    dataset: str,
    student: GenerativeModel,
    role: str,
    kind: type[M],
    kind_name: str,
    same: tuple[str, ...] = SAME_NETWORK,
) -> M:
    """The model at ``source`` (a folder or shipped name for ``dataset``), frozen in eval
    mode on the student's device, after checking that it is a ``kind`` (``kind_name`` in
    messages) whose config agrees with the student's on the fields ``same``.

    Raises:
        CheckpointError: it cannot be loaded (the message starts with ``role``).
        ConfigError: it is not a ``kind``, or a field of ``same`` differs.
    """
    from genmnist.models import load

    try:
        model = load(source, dataset=dataset)
    except CheckpointError as exc:
        raise CheckpointError(f"{role}: {exc}") from None
    if not isinstance(model, kind):
        raise ConfigError(f"{role} '{source}' is a {type(model).__name__}, not a {kind_name}")
    if problem := student.config.first_difference(model.config, same):
        raise ConfigError(f"{role} '{source}': {problem}")
    return model.eval().requires_grad_(False).to(student.device)
