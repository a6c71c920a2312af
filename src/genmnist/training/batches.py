"""Which images each process trains on at each step."""

from __future__ import annotations

import torch

from genmnist.data import InMemoryDataset


class ShardedBatches:
    """The batches of a run: every process draws the same permutation of the data per
    epoch (from the seed and the epoch alone, so a resumed run continues where it
    stopped) and takes its equal, contiguous slice of each global batch.

    Args:
        dataset: The training split.
        batch_size: The global batch size.
        world_size: Number of processes.
        rank: This process's rank.
        seed: The run's seed.
        device: Where the batches go.
    """

    def __init__(
        self,
        dataset: InMemoryDataset,
        batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.dataset, self.seed, self.device = dataset, seed, device
        self.batch_size, self.local_batch = batch_size, batch_size // world_size
        self.offset = rank * self.local_batch
        self.batches_per_epoch = len(dataset) // batch_size
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's images and labels of the batch of ``step``, on the device."""
        epoch, batch_index = divmod(step, self.batches_per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=generator))
        start = batch_index * self.batch_size + self.offset
        images, labels = self.dataset.batch(self._order[1][start : start + self.local_batch])
        return images.to(self.device), labels.to(self.device)
