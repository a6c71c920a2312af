"""Fine-tuning: training tasks that continue a trained model with another objective.

Each method is a `genmnist.training.TrainingTask` in a module of its own, registered in
`genmnist.training.TRAINING_TASKS`; the model it trains is an ordinary model.
"""

from genmnist.finetuning.adversarial_decoder import AdversarialDecoderTuning
from genmnist.finetuning.null_label import NullLabelTuning

__all__ = ["AdversarialDecoderTuning", "NullLabelTuning"]
