from __future__ import annotations

import torch
from torch.utils.data import Dataset

from selfpose_core.models.harness import StepBatches


class CountingSource(Dataset):
    """Item i = {"x": i}; counts how often each index was generated."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __len__(self) -> int:
        return 10 ** 6

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.calls.append(int(index))
        return {"x": torch.tensor(int(index))}


def test_pool_reuses_rendered_samples_deterministically() -> None:
    crops, scenes = CountingSource(), CountingSource()
    ds = StepBatches(crops, scenes, 8, 2, 50, seed=3, crop_pool=16, scene_pool=4)
    first = [ds[s] for s in range(50)]
    crop_ids = torch.cat([b["crops"]["x"] for b in first])
    assert int(crop_ids.max()) < 16 and len(set(crop_ids.tolist())) > 8
    assert int(torch.cat([b["scenes"]["x"] for b in first]).max()) < 4
    assert len(crops.calls) == len(set(crops.calls)) <= 16  # each pooled sample generated once
    again = StepBatches(CountingSource(), CountingSource(), 8, 2, 50, seed=3, crop_pool=16, scene_pool=4)
    assert torch.equal(again[7]["crops"]["x"], first[7]["crops"]["x"])  # a pure function of (seed, step)


def test_no_pool_generates_every_sample() -> None:
    crops, scenes = CountingSource(), CountingSource()
    ds = StepBatches(crops, scenes, 4, 2, 10, seed=0)
    assert ds[3]["crops"]["x"].tolist() == [12, 13, 14, 15]
    assert crops.calls == [12, 13, 14, 15]
