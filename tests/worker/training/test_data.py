"""The fast path yields exactly what DataLoader + ToTensor yields, and consumes the RNG the same way."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from spec.job import Augment, RandomCrop
from worker.training.data import BatchTransform, LoaderBatches, TensorBatches, make_batches, random_crop, random_flip
from worker.training.datasets import DatasetUnavailable, Split, load_split, split_indices

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


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.rand(64, 3, 10, 12)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(64):
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[i], padded[i, :, dy:dy + 10, dx:dx + 12])]
        assert windows, f"image {i} is not a crop of its padded self"
        offsets.add(windows[0])
    assert len(offsets) > 10  # offsets vary per image
    again = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_random_flip_mirrors_about_half():
    x = torch.rand(200, 1, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 70 < sum(flipped) < 130


def test_transform_normalizes_per_channel_after_augmenting():
    x = torch.rand(8, 3, 6, 6)
    plain = BatchTransform(device=CPU, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])(x)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(3, 1, 1)
    assert torch.equal(plain, expected)
    augment = Augment(random_crop=RandomCrop(padding=1), horizontal_flip=True)
    a = BatchTransform(device=CPU, augment=augment, generator=torch.Generator().manual_seed(4))(x)
    b = random_flip(random_crop(x, 1, g := torch.Generator().manual_seed(4)), g)
    assert torch.equal(a, b)


def test_decoded_splits_stay_in_host_memory_over_budget():
    split = Split(torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8), torch.arange(10))
    for budget, resident in ((1 << 20, True), (10, False)):
        batches = make_batches(split, None, batch_size=4, shuffle=False, generator=torch.Generator(), device=CPU,
                               memory_budget_bytes=budget)
        assert isinstance(batches, TensorBatches)
        x, y = next(batches.epoch())
        assert torch.equal(x, split.images[:4].float() / 255) and y.tolist() == [0, 1, 2, 3]
        # The fast path keeps uint8 (4x less memory than float) and scales each batch as it is taken.
        assert batches.x.dtype == torch.uint8 and batches.resident == resident
