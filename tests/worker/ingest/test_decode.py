"""The ingest on archives built in memory: both layouts, sizes and channels, the store it writes."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.storage import ARCHIVE, STORE
from spec.datasets import IngestOptions
from tests.archives import bars, class_folders, csv_layout, jpeg, png, tar_of, zip_of
from worker.ingest.archives import Limits
from worker.ingest.decode import IngestFailed, IngestResult, IngestStopped, channel_stats, ingest
from worker.ingest.store import read_store

LIMITS = Limits(max_members=10_000, max_uncompressed_bytes=64 << 20, max_ratio=100, max_member_bytes=8 << 20)
CLASSES = ["circle", "square", "triangle"]


def run(folder: Path, archive: bytes, **options: object) -> IngestResult:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARCHIVE).write_bytes(archive)
    return ingest(folder / ARCHIVE, folder, options=IngestOptions.model_validate(options), limits=LIMITS,
                  max_pixels=1 << 24, max_store_bytes=1 << 30)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return bars(90, seed=1, classes=3)


def test_class_folders_with_a_seeded_stratified_split(tmp_path: Path, data):
    x, y = data
    archive = zip_of(class_folders(x, y, CLASSES))
    result = run(tmp_path / "a", archive, test_fraction=0.25, seed=7)
    assert result.layout == "class_folders"
    assert result.info.classes == CLASSES
    assert result.info.shape.model_dump() == {"channels": 1, "height": 28, "width": 28}
    per_class = np.bincount(y, minlength=3)
    test = result.splits["test"]["per_class"]
    assert test == {c: round(n * 0.25) for c, n in zip(CLASSES, per_class.tolist(), strict=True)}
    assert result.splits["train"]["images"] + result.splits["test"]["images"] == 90
    store = read_store(tmp_path / "a" / STORE)
    assert store.train_images.dtype == torch.uint8 and store.train_images.shape[1:] == (1, 28, 28)
    # Every stored image is one of the archive's, with its label.
    originals = {torch.from_numpy(img).numpy().tobytes(): int(label) for img, label in zip(x, y, strict=True)}
    for images, targets in ((store.train_images, store.train_targets), (store.test_images, store.test_targets)):
        for image, target in zip(images, targets, strict=True):
            assert originals[image[0].numpy().tobytes()] == int(target)
    # The same seed splits the same way; another seed differently.
    run(tmp_path / "b", archive, test_fraction=0.25, seed=7)
    run(tmp_path / "c", archive, test_fraction=0.25, seed=8)
    same, other = read_store(tmp_path / "b" / STORE), read_store(tmp_path / "c" / STORE)
    assert torch.equal(same.test_images, store.test_images)
    assert not torch.equal(other.test_images, store.test_images)


def test_train_and_test_folders_under_a_common_top_folder_and_system_files(tmp_path: Path, data):
    x, y = data
    files = {**class_folders(x[:60], y[:60], CLASSES, "export/train/"),
             **class_folders(x[60:], y[60:], CLASSES, "export/test/"),
             "export/.DS_Store": b"junk", "__MACOSX/export/._00001.png": b"junk", "export/README.md": b"hello"}
    result = run(tmp_path, tar_of(files, mode="w:gz"))
    assert result.splits["train"]["images"] == 60 and result.splits["test"]["images"] == 30
    assert result.splits["test"]["per_class"] == dict(zip(CLASSES, np.bincount(y[60:]).tolist(), strict=True))
    reasons = {s["reason"]: s["count"] for s in result.skipped}
    assert reasons == {"system file (hidden, __MACOSX, Thumbs.db)": 2, "not inside a class folder": 1}
    store = read_store(tmp_path / STORE)
    # The test split is the archive's test/ part, in file-name order (here: the original order).
    assert torch.equal(store.test_images[:, 0], torch.from_numpy(x[60:]))
    assert torch.equal(store.test_targets, torch.from_numpy(y[60:]))


@pytest.mark.parametrize("header", [True, False])
def test_csv_and_class_folders_give_the_same_store(tmp_path: Path, data, header: bool):
    x, y = data
    run(tmp_path / "folders", zip_of(class_folders(x, y, CLASSES)))
    csv_result = run(tmp_path / "csv", zip_of(csv_layout(x, y, CLASSES, header=header)))
    assert csv_result.layout == "csv"
    a, b = read_store(tmp_path / "folders" / STORE), read_store(tmp_path / "csv" / STORE)
    for name in ("train_images", "train_targets", "test_images", "test_targets"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.info == b.info


def test_csv_with_integer_labels_classes_txt_and_a_test_csv(tmp_path: Path, data):
    x, y = data
    # Both CSVs number their files from 0: the test images have a folder of their own.
    files = {**csv_layout(x[:60], y[:60], None, csv_name="train.csv", folder="train_pics"),
             **csv_layout(x[60:], y[60:], None, csv_name="test.csv", folder="test_pics")}
    result = run(tmp_path / "indices", zip_of(files))
    assert result.info.classes == ["0", "1", "2"]
    assert result.splits["test"]["images"] == 30
    named = run(tmp_path / "named", zip_of({**files, "classes.txt": b"circle\nsquare\ntriangle\n"}))
    assert named.info.classes == CLASSES
    assert named.splits["train"]["per_class"] == dict(zip(CLASSES, np.bincount(y[:60]).tolist(), strict=True))


def test_image_size_resizes_and_channels_convert(tmp_path: Path):
    rng = np.random.default_rng(0)
    # Per class: four 20x30 images, then a 25x30 and a 26x30 one.
    files = {f"{c}/{i}.png": png(rng.integers(0, 256, (20 if i < 4 else 21 + i, 30, 3)))
             for c in "ab" for i in range(6)}
    with pytest.raises(IngestFailed, match="is 25x30 but the dataset's images are 20x30.*image_size"):
        run(tmp_path / "strict", zip_of(files))
    result = run(tmp_path / "resized", zip_of(files), image_size="16x24", channels=1, test_fraction=0.5)
    assert result.info.shape.model_dump() == {"channels": 1, "height": 16, "width": 24}
    assert result.splits["train"]["images"] == result.splits["test"]["images"] == 6
    # Held out: two of each class's four 20x30 images (seed 3 puts no odd one in the test split).
    skipped = run(tmp_path / "skipped", zip_of(files), skip_invalid="true", test_fraction=0.33, seed=3)
    assert skipped.info.shape.model_dump() == {"channels": 3, "height": 20, "width": 30}
    [entry] = skipped.skipped
    assert (entry["reason"], entry["count"]) == ("size differs from the dataset's", 4)
    assert sorted(entry["examples"]) == ["a/4.png", "a/5.png", "b/4.png", "b/5.png"]


def test_one_colour_image_makes_the_dataset_rgb(tmp_path: Path, data):
    x, y = data
    files = class_folders(x[:30], y[:30], CLASSES)
    rgb = np.stack([x[0], x[0] // 2, x[0] // 3], axis=-1)
    files["triangle/zzz.jpg"] = jpeg(rgb)
    result = run(tmp_path, zip_of(files))
    assert result.info.shape.channels == 3 and len(result.info.mean) == 3
    store = read_store(tmp_path / STORE)
    # Gray images became R = G = B, as convert("RGB") makes them.
    everything = torch.cat([store.train_images, store.test_images])
    gray = everything[(everything[:, 0] == everything[:, 1]).flatten(1).all(1)]
    assert len(gray) == 30 and torch.equal(gray[:, 0], gray[:, 2])


def test_modes_are_converted_as_predict_converts_them(tmp_path: Path):
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
    rgba = rng.integers(0, 256, (8, 8, 4)).astype(np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    files = {"a/wide.png": png(wide), "a/wide2.png": png(wide), "b/rgba.png": png(rgba, "RGBA"),
             "b/palette.png": buffer.getvalue()}
    result = run(tmp_path, zip_of(files), channels=1, test_fraction=0.5)
    store = read_store(tmp_path / STORE)
    assert result.info.shape.channels == 1
    wide_8bit = np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8)
    everything = torch.cat([store.train_images, store.test_images])[:, 0].numpy()
    assert any(np.array_equal(image, wide_8bit) for image in everything)


def test_statistics_are_of_the_training_split(tmp_path: Path, data):
    x, y = data
    run(tmp_path, zip_of(class_folders(x, y, CLASSES)))
    store = read_store(tmp_path / STORE)
    pixels = store.train_images.double() / 255
    assert store.info.mean == pytest.approx([pixels.mean().item()], abs=1e-12)
    assert store.info.std == pytest.approx([pixels.std(unbiased=False).item()], abs=1e-9)
    mean, std = channel_stats(np.repeat(store.train_images.numpy(), 3, axis=1))
    assert mean.tolist() == pytest.approx(store.info.mean * 3) and std.tolist() == pytest.approx(store.info.std * 3)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_kinds(tmp_path: Path, data, mode: str):
    x, y = data
    result = run(tmp_path, tar_of(class_folders(x, y, CLASSES), mode=mode))
    assert result.splits["train"]["images"] + result.splits["test"]["images"] == 90


def test_a_class_with_one_image_cannot_be_split(tmp_path: Path, data):
    x, y = data
    files = class_folders(x[y != 2], y[y != 2], CLASSES)
    files["triangle/only.png"] = png(x[0])
    with pytest.raises(IngestFailed, match="class 'triangle' has 1 image"):
        run(tmp_path, zip_of(files))


def test_progress_can_stop_it_and_nothing_is_left(tmp_path: Path, data):
    x, y = data
    (tmp_path / ARCHIVE).write_bytes(zip_of(class_folders(x, y, CLASSES)))
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> bool:
        seen.append((done, total))
        return False

    with pytest.raises(IngestStopped):
        ingest(tmp_path / ARCHIVE, tmp_path, options=IngestOptions(), limits=LIMITS, max_pixels=1 << 24,
               max_store_bytes=1 << 30, progress=progress)
    assert seen and seen[0][1] == 90
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]


def test_the_store_limit_names_image_size(tmp_path: Path, data):
    x, y = data
    (tmp_path / ARCHIVE).write_bytes(zip_of(class_folders(x, y, CLASSES)))
    with pytest.raises(IngestFailed, match="would take 70560 bytes.*smaller image_size"):
        ingest(tmp_path / ARCHIVE, tmp_path, options=IngestOptions(), limits=LIMITS, max_pixels=1 << 24,
               max_store_bytes=70_000)
    assert not (tmp_path / STORE).exists()


def test_limits_known_before_decoding_fail_at_once(tmp_path: Path, data):
    x, y = data
    (tmp_path / ARCHIVE).write_bytes(zip_of(class_folders(x, y, CLASSES)))
    calls: list[int] = []
    with pytest.raises(IngestFailed, match="90 images of 3x512x512 would take"):
        ingest(tmp_path / ARCHIVE, tmp_path, options=IngestOptions(image_size=512, channels=3), limits=LIMITS,
               max_pixels=1 << 24, max_store_bytes=1 << 26, progress=lambda d, t: bool(calls.append(d)) or True)
    assert calls == []  # refused before the first image was decoded
    big = {f"{c}/{i}.png": png(np.zeros((10, 1100))) for c in "ab" for i in range(2)}
    with pytest.raises(IngestFailed, match="the images are 10x1100 pixels.*image_size"):
        run(tmp_path / "big", zip_of(big))
    assert run(tmp_path / "resized", zip_of(big), image_size="10x100").info.shape.width == 100


def test_split_folders_in_any_case_and_nested_class_folders(tmp_path: Path, data):
    x, y = data
    files = {**class_folders(x[:60], y[:60], CLASSES, "Train/"), **class_folders(x[60:], y[60:], CLASSES, "TEST/")}
    result = run(tmp_path / "cased", zip_of(files))
    assert result.info.classes == CLASSES and result.splits["test"]["images"] == 30
    nested = {**class_folders(x, y, CLASSES, "images/"), **class_folders(x, y, CLASSES, "masks/")}
    with pytest.raises(IngestFailed, match="the class folder images/ holds folders"):
        run(tmp_path / "nested", zip_of(nested))


def test_padded_integer_labels_and_a_named_header_with_a_missing_first_file(tmp_path: Path, data):
    x, y = data
    files = csv_layout(x, y, None, header=True)
    padded = files["labels.csv"].replace(b",0\n", b",00\n").replace(b",1\n", b",01\n")
    result = run(tmp_path / "padded", zip_of({**files, "labels.csv": padded}))
    assert result.info.classes == ["0", "1", "2"]
    assert result.splits["train"]["images"] + result.splits["test"]["images"] == 90
    missing_first = files["labels.csv"].replace(b"file,label\n", b"file,label\nmissing.png,0\n")
    with pytest.raises(IngestFailed, match="names 1 file\\(s\\) that are not in the archive, e.g. 'missing.png'"):
        run(tmp_path / "missing", zip_of({**files, "labels.csv": missing_first}))


def test_a_constant_channel_gets_a_usable_std(tmp_path: Path):
    flat = {f"{c}/{i}.png": png(np.full((8, 8), 7 if c == "a" else 7)) for c in "ab" for i in range(3)}
    result = run(tmp_path, zip_of(flat))
    assert result.info.std == [1 / 255] and result.info.mean == pytest.approx([7 / 255])


def test_only_the_usual_image_formats_are_read(tmp_path: Path, data):
    x, y = data
    pcx = io.BytesIO()
    Image.fromarray(x[0]).save(pcx, format="PCX")
    with pytest.raises(IngestFailed, match="'circle/odd.pcx' is not an image Pillow can read"):
        run(tmp_path, zip_of({**class_folders(x, y, CLASSES), "circle/odd.pcx": pcx.getvalue()}))
