"""Objectives: training tasks that train a model with a term beside its own loss.

Each method is a `genmnist.training.TrainingTask` in a module of its own, registered in
`genmnist.training.TRAINING_TASKS`; the model it trains is an ordinary model.
"""

from genmnist.objectives.auxiliary_classifier import AuxiliaryClassifier

__all__ = ["AuxiliaryClassifier"]
