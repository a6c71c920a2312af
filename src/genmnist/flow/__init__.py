"""Flow matching building blocks: the straight noise-to-data path, the distributions of
training times, and ODE samplers, each plain data or a plain function registered by name
where there is a choice.

The family's model is `genmnist.models.flow.FlowMatching` (``flow``, ``flow-cfg``); its
conditioning and guidance are the same parts the diffusion models use
(`genmnist.conditioning`, `genmnist.diffusion.guidance`).
"""

from genmnist.flow.path import LinearPath
from genmnist.flow.samplers import FLOW_SAMPLERS, flow_times, sample_flow
from genmnist.flow.times import TIME_DISTRIBUTIONS

__all__ = ["FLOW_SAMPLERS", "TIME_DISTRIBUTIONS", "LinearPath", "flow_times", "sample_flow"]
