"""Batches of diffraction patterns (and ground-truth patches) for training and validation.

At gridsize 1 an item is one pattern; at gridsize 2 it is one group of C neighbouring patterns
(``overlap.group_members``, members ``group_spacing`` pixels apart) with their offsets on the group's
canvas, and the split below is over groups (a pattern can sit in a train group and a validation
group: they share neighbours).

The train split is divided into train/validation by ``val_fraction`` with a generator seeded by
``seed``; each epoch's order is drawn from (``seed``, epoch) alone (``EpochShuffle``), so it is the
same whether the run went through or was resumed at that epoch. Under DDP Lightning swaps in a
DistributedSampler (also seeded per epoch), which gives each rank a disjoint share.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, Subset

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.npz_data import GridLinesData


class GroupDataset(Dataset):
    """Groups of C patterns: (C, N, N) diffraction, amplitude and phase, and (C, 2) canvas offsets."""

    def __init__(self, data: GridLinesData, gridsize: int, spacing: int | None = None):
        from ptycho_torch.overlap import group_members, group_offsets

        self.patterns = PatternDataset(data)
        groups = group_members(data.coords, data.image_index, gridsize, spacing)  # (G, C)
        self.groups = torch.from_numpy(groups)
        self.offsets = torch.from_numpy(group_offsets(data.coords, groups))  # (G, C, 2) int64

    def __len__(self) -> int:
        return self.groups.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        members = self.groups[index]  # (C,)
        return {**self.patterns[members], "offsets": self.offsets[index]}


class PatternDataset(Dataset):
    """Measured amplitudes with their ground-truth amplitude and phase patches, as a dict per item."""

    def __init__(self, data: GridLinesData):
        self.diffraction = torch.from_numpy(np.ascontiguousarray(data.diffraction))  # (M, N, N) float32
        self.amplitude = torch.from_numpy(np.ascontiguousarray(data.Y_I))  # (M, N, N) float32
        self.phase = torch.from_numpy(np.ascontiguousarray(data.Y_phi))  # (M, N, N) float32

    def __len__(self) -> int:
        return self.diffraction.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"diffraction": self.diffraction[index], "amplitude": self.amplitude[index],
                "phase": self.phase[index]}


def validation_count(count: int, val_fraction: float) -> int:
    """How many of ``count`` items validate: round(count * val_fraction), at least 1 if > 0, and at
    least one item left to train on."""
    return 0 if val_fraction == 0 else min(max(1, round(count * val_fraction)), count - 1)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (train, validation) index lists, ``validation_count`` of them validating."""
    n_val = validation_count(count, val_fraction)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The permutation of an epoch, drawn from (seed, epoch) alone: no state carries over from one
    epoch to the next, and no (seed, epoch) pair repeats another's (as seed + epoch would)."""
    key = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.randperm(size, generator=torch.Generator().manual_seed(int(key))).tolist()


class EpochShuffle(RandomSampler):
    """``epoch_order`` as a sampler; Lightning calls ``set_epoch`` before each epoch. A
    RandomSampler subclass, so that Lightning treats the loader as shuffled."""

    def __init__(self, dataset: Dataset, seed: int):
        super().__init__(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(len(self.data_source), self.seed, self.epoch))


class EpochShard(DistributedSampler):
    """Under DDP: this rank's share of ``epoch_order``, padded and strided as DistributedSampler
    does. Lightning leaves a DistributedSampler as it is; the one it would put in its place draws
    its order from PL_GLOBAL_SEED, the same for every training seed."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self):
        order = epoch_order(len(self.dataset), self.seed, self.epoch)
        while len(order) < self.total_size:  # pad by repeating the start, as DistributedSampler does
            order += order[:self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])


class GridLinesDataModule(L.LightningDataModule):
    def __init__(self, train: GridLinesData, training: TrainingConfig, execution: PyTorchExecutionConfig,
                 group_spacing: int | None = None):
        super().__init__()
        self.training = training
        self.execution = execution
        gridsize = training.model.gridsize
        patterns = PatternDataset(train) if gridsize == 1 else GroupDataset(train, gridsize, group_spacing)
        train_idx, val_idx = split_indices(len(patterns), training.val_fraction, training.seed)
        self.train_set = Subset(patterns, train_idx)
        self.val_set = Subset(patterns, val_idx) if val_idx else None

    def _loader(self, dataset: Dataset, batch_size: int, sampler: EpochShuffle | None) -> DataLoader:
        workers = self.execution.num_workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.training.batch_size, self._train_sampler())

    def _train_sampler(self) -> Sampler:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            return EpochShard(self.train_set, self.training.seed, trainer.world_size, trainer.global_rank)
        return EpochShuffle(self.train_set, self.training.seed)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, self.execution.infer_batch_size, None) if self.val_set else []
