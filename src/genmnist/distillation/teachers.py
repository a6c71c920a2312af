"""Loading the flow models a distillation task learns from, with one set of checks."""

from __future__ import annotations

from genmnist.errors import CheckpointError, ConfigError
from genmnist.models.base import GenerativeModel
from genmnist.models.flow import FlowMatching

#: Network fields a student shares with the flow model whose weights it starts from.
SAME_NETWORK = ("channels", "blocks_per_level", "attention_levels", "num_classes", "clusters")


def load_flow_model(source: str, dataset: str, student: GenerativeModel, role: str) -> FlowMatching:
    """The flow model at ``source`` (a folder or shipped name for ``dataset``), frozen in
    eval mode on the student's device, after checking that its network matches the
    student's.

    Raises:
        CheckpointError: it cannot be loaded (the message starts with ``role``).
        ConfigError: it is not a flow model, or its network differs from the student's.
    """
    from genmnist.models import load

    try:
        model = load(source, dataset=dataset)
    except CheckpointError as exc:
        raise CheckpointError(f"{role}: {exc}") from None
    if not isinstance(model, FlowMatching):
        raise ConfigError(f"{role} '{source}' is a {type(model).__name__}, not a flow model")
    if problem := student.config.first_difference(model.config, SAME_NETWORK):
        raise ConfigError(f"{role} '{source}': {problem}")
    return model.eval().requires_grad_(False).to(student.device)
