"""The fast path yields exactly what DataLoader + ToTensor yields, and consumes the RNG the same way."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from worker.data import LoaderBatches, TensorBatches, make_batches
from worker.datasets import DatasetUnavailable, load_split, split_indices

CPU = torch.device("cpu")


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_memory_batches_equal_dataloader_batches(tiny_data_root: Path, shuffle: bool, val_fraction: float):
    ds = load_split("fashion-mnist", tiny_data_root, train=True)
    idx, _ = split_indices(len(ds), val_fraction, seed=3)
    subset = ds if val_fraction == 0 else Subset(ds, idx.tolist())
    g_ref, g_fast = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    reference = DataLoader(subset, batch_size=50, shuffle=shuffle, generator=g_ref)
    fast = make_batches(ds, None if val_fraction == 0 else idx, batch_size=50, shuffle=shuffle,
                        generator=g_fast, device=CPU, mode="memory")
    assert isinstance(fast, TensorBatches)
    for _epoch in range(2):  # the second epoch checks the generators stayed in step
        ref_batches = list(reference)
        fast_batches = list(fast.epoch())
        assert len(ref_batches) == len(fast_batches) == len(fast) == len(reference)
        for (xr, yr), (xf, yf) in zip(ref_batches, fast_batches, strict=True):
            assert xr.dtype == xf.dtype == torch.float32 and xr.shape == xf.shape
            assert torch.equal(xr, xf) and torch.equal(yr, yf)
        assert torch.equal(g_ref.get_state(), g_fast.get_state())


def test_auto_mode_falls_back_to_dataloader_over_budget(tiny_data_root: Path):
    ds = load_split("mnist", tiny_data_root, train=False)
    g = torch.Generator()
    assert isinstance(make_batches(ds, None, batch_size=8, shuffle=False, generator=g, device=CPU,
                                   memory_budget_bytes=10), LoaderBatches)
    assert isinstance(make_batches(ds, None, batch_size=8, shuffle=False, generator=g, device=CPU),
                      TensorBatches)


def test_values_are_to_tensor_semantics(tiny_data_root: Path):
    ds = load_split("fashion-mnist", tiny_data_root, train=True)
    x, y = next(make_batches(ds, None, batch_size=4, shuffle=False, generator=torch.Generator(),
                             device=CPU, mode="memory").epoch())
    assert x.shape == (4, 1, 28, 28)
    assert torch.equal(x[0, 0], ds.data[0].float() / 255)
    assert y.tolist() == ds.targets[:4].tolist()


def test_split_is_seeded_disjoint_and_complete():
    a_train, a_val = split_indices(1000, 0.1, seed=1)
    b_train, b_val = split_indices(1000, 0.1, seed=1)
    _, c_val = split_indices(1000, 0.1, seed=2)
    assert a_val is not None and b_val is not None and c_val is not None
    assert torch.equal(a_val, b_val) and not torch.equal(a_val, c_val)
    assert len(a_val) == 100 and len(a_train) == 900
    assert sorted(torch.cat([a_train, a_val]).tolist()) == list(range(1000))


def test_missing_dataset_is_a_readable_error(tmp_path: Path):
    with pytest.raises(DatasetUnavailable, match="not found under .* downloading is disabled"):
        load_split("mnist", tmp_path, train=True, download=False)
