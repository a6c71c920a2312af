"""Helper of test_distributed.py: ``genmnist train ...`` as torchrun runs it, plus a dump
of every process's final weights.

Run as ``python -m torch.distributed.run --nproc_per_node N tests/ddp_train.py train NAME
...``. Environment: ``DDP_DUMP`` (folder for ``rank{r}.safetensors``) and
``DDP_LOG_EVERY`` (steps between metrics records).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import genmnist.training as training
from genmnist.cli import main
from genmnist.io import save_tensors

torch.set_num_threads(1)
fit = training.Trainer.fit


def fit_and_dump(self):
    if "DDP_LOG_EVERY" in os.environ:
        self.options.log_every = int(os.environ["DDP_LOG_EVERY"])
    result = fit(self)
    dump = Path(os.environ["DDP_DUMP"])
    save_tensors(dump / f"rank{self.rank}.safetensors", self.model.state_dict())
    return result


training.Trainer.fit = fit_and_dump
main(sys.argv[1:])
