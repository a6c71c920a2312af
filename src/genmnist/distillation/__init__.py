"""Distillation: training tasks that teach a student model what a teacher does, so the
student samples at the teacher's quality for less.

Each method is a `genmnist.training.TrainingTask` in a module of its own, registered in
`genmnist.training.TRAINING_TASKS`; the student it trains is an ordinary model.
"""

from genmnist.distillation.guidance import GuidanceDistillation
from genmnist.distillation.meanflow import MeanFlowDistillation
from genmnist.distillation.reflow import Reflow

__all__ = ["GuidanceDistillation", "MeanFlowDistillation", "Reflow"]
