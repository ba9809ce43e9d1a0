"""Hostile and broken archives: each fails with a reason a person can act on, and the ingest writes nothing
outside the dataset's folder (nor leaves a store or a scratch file in it)."""

import gzip
import io
import os
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.storage import ARCHIVE
from spec.datasets import IngestOptions
from tests.archives import bars, class_folders, csv_layout, png, tar_of, tar_with, zip_of
from worker.ingest.archives import ArchiveRejected, Limits, open_archive
from worker.ingest.decode import IngestFailed, IngestResult, ingest

CLASSES = ["a", "b"]
LIMITS = Limits(max_members=200, max_uncompressed_bytes=4 << 20, max_ratio=100, max_member_bytes=2 << 20)


@pytest.fixture(scope="module")
def good() -> dict[str, bytes]:
    """A valid class-folder dataset, to hide hostile members among."""
    x, y = bars(20, seed=5, classes=2)
    return class_folders(x, y, CLASSES)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


class Sandbox:
    """A state folder with the dataset's folder and neighbours that nothing may touch."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "datasets" / ("0" * 32)
        self.folder.mkdir(parents=True)
        for neighbour in ("datasets/" + "1" * 32 + "/store.safetensors", "artifacts/job/best.safetensors",
                          "etc/passwd"):
            (root / neighbour).parent.mkdir(parents=True, exist_ok=True)
            (root / neighbour).write_bytes(b"keep me")

    def ingest(self, archive: bytes, **options: object) -> IngestResult:
        (self.folder / ARCHIVE).write_bytes(archive)
        before = snapshot(self.root)
        cwd = os.getcwd()
        os.chdir(self.folder)  # relative paths, if anything wrote them, would land here: still caught
        try:
            return ingest(self.folder / ARCHIVE, self.folder, options=IngestOptions.model_validate(options),
                          limits=LIMITS, max_pixels=1 << 24, max_store_bytes=1 << 30)
        finally:
            os.chdir(cwd)
            after = snapshot(self.root)
            changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            inside = f"{self.folder.relative_to(self.root)}/"
            assert all(k.startswith(inside) for k in changed), f"wrote outside the dataset folder: {changed}"

    def fails(self, archive: bytes, match: str, **options: object) -> None:
        with pytest.raises(IngestFailed, match=match):
            self.ingest(archive, **options)
        assert sorted(p.name for p in self.folder.iterdir()) == [ARCHIVE], "a failed ingest left files behind"
        assert not list(self.root.rglob("evil*")), "a hostile member reached the disk"


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def zip_named(good: dict[str, bytes], *names: str) -> bytes:
    """The good archive plus members whose names are written verbatim (zipfile keeps them as given)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in good.items():
            z.writestr(name, data)
        for name in names:
            z.writestr(zipfile.ZipInfo(name), png(np.zeros((28, 28))))
    return out.getvalue()


@pytest.mark.parametrize(("name", "reason"), [
    ("../evil.png", "points outside the archive"),
    ("a/../../evil.png", "points outside the archive"),
    ("..\\..\\evil.png", "points outside the archive"),
    ("/tmp/evil.png", "absolute path"),
    ("C:/evil.png", "absolute path"),
])
def test_zip_slip(box: Sandbox, good, name: str, reason: str):
    box.fails(zip_named(good, name), reason)


@pytest.mark.parametrize(("name", "reason"), [("../../evil.png", "outside the archive"),
                                              ("/etc/evil.png", "absolute path")])
def test_tar_slip(box: Sandbox, good, name: str, reason: str):
    box.fails(tar_of({**good, name: png(np.zeros((28, 28)))}), reason)


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(("entry", "reason"), [
    (_link("a/evil.png", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
    (_link("a/evil.png", tarfile.LNKTYPE, "a/00000.png"), "is a hard link"),
    (_link("a/evil.png", tarfile.CHRTYPE, ""), "special file"),
])
def test_tar_links_and_devices(box: Sandbox, good, entry: tarfile.TarInfo, reason: str):
    box.fails(tar_with([entry], good), reason)


def test_zip_symlink(box: Sandbox, good):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in good.items():
            z.writestr(name, data)
        link = zipfile.ZipInfo("a/evil.png")
        link.external_attr = 0o120777 << 16
        z.writestr(link, "/etc/passwd")
    box.fails(out.getvalue(), "is a symbolic link")


def test_too_many_members(box: Sandbox):
    files = {f"a/{i}.png": b"x" for i in range(150)} | {f"b/{i}.png": b"x" for i in range(60)}
    box.fails(zip_of(files), "more than 200 members")
    box.fails(tar_of(files), "more than 200 members")


def test_too_many_bytes_uncompressed(box: Sandbox):
    noise = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    files = {f"{c}/{i}.png": noise for c in "ab" for i in range(3)}
    box.fails(zip_of(files), "more than 4194304 bytes uncompressed")
    box.fails(tar_of(files, mode="w:gz"), "more than 4194304 bytes uncompressed")


def test_compression_bombs(box: Sandbox, good):
    zeros = bytes(3 << 20)
    box.fails(zip_of({**good, "a/evil.png": zeros}, compression=zipfile.ZIP_DEFLATED), "compression bomb")
    box.fails(tar_of({**good, "a/evil.png": zeros}, mode="w:gz"), "compression bomb")
    box.fails(tar_of({**good, "a/evil.png": zeros}, mode="w:xz"), "compression bomb")


def test_pixel_bomb(box: Sandbox, good):
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")  # 400 megapixels in about 50 KB
    bomb = out.getvalue()
    assert len(bomb) < 100_000
    # Refused from its header, before a pixel is decoded (Pillow's own bomb check says so first here).
    box.fails(zip_of({**good, "a/bomb.png": bomb}), "'a/bomb.png' has too many pixels")
    result = box.ingest(zip_of({**good, "a/bomb.png": bomb}), skip_invalid="true")
    assert result.skipped == [{"reason": "more than 16777216 pixels", "count": 1, "examples": ["a/bomb.png"]}]


def test_non_image_files_are_refused_or_skipped_and_counted(box: Sandbox, good):
    whole = png(np.random.default_rng(1).integers(0, 256, (28, 28)))
    archive = zip_of({**good, "a/notes.txt": b"hello", "b/broken.png": whole[: len(whole) // 2]})
    box.fails(zip_of({**good, "a/notes.txt": b"hello"}),
              "'a/notes.txt' is not an image Pillow can read.*skip_invalid=true")
    box.fails(archive, "'b/broken.png' is broken and cannot be decoded.*skip_invalid=true")
    result = box.ingest(archive, skip_invalid="true")
    assert sorted((s["reason"], s["count"], tuple(s["examples"])) for s in result.skipped) == [
        ("broken image", 1, ("b/broken.png",)), ("not an image Pillow can read", 1, ("a/notes.txt",))]
    assert result.splits["train"]["images"] + result.splits["test"]["images"] == 20


def test_csv_naming_absent_or_outside_files(box: Sandbox):
    x, y = bars(10, seed=2, classes=2)
    files = csv_layout(x, y, CLASSES)
    rows = files["labels.csv"].decode()
    box.fails(zip_of({**files, "labels.csv": (rows + "gone.png,a\nalso_gone.png,b\n").encode()}),
              "names 2 file\\(s\\) that are not in the archive, e.g. 'gone.png', 'also_gone.png'")
    box.fails(zip_of({**files, "labels.csv": (rows + "../../etc/passwd,a\n").encode()}),
              "line 11: '../../etc/passwd' names a file outside the archive")
    box.fails(zip_of({**files, "labels.csv": ("/etc/passwd,a\n" + rows).encode()}), "outside the archive")


def test_unknown_labels(box: Sandbox):
    x, y = bars(20, seed=3, classes=2)
    train = csv_layout(x[:14], y[:14], CLASSES, csv_name="train.csv", folder="train")
    test = csv_layout(x[14:], y[14:], CLASSES, csv_name="test.csv", folder="test")
    bad_test = test["test.csv"].decode().replace(",b\n", ",zebra\n", 1).encode()
    box.fails(zip_of({**train, **test, "test.csv": bad_test}), "label 'zebra' is not a class of the training CSV")
    indices = csv_layout(x, y, None)
    box.fails(zip_of({**indices, "classes.txt": b"a\nb\n", "images/extra.png": png(x[0]),
                      "labels.csv": indices["labels.csv"] + b"extra.png,7\n"}),
              "label 7 is not a class index \\(0 to 1\\)")
    box.fails(zip_of({**class_folders(x, y, CLASSES), "classes.txt": b"a\nc\n"}), "'b' not in classes.txt")


def test_a_class_with_no_images_in_a_split(box: Sandbox):
    x, y = bars(20, seed=4, classes=2)
    files = {**class_folders(x, y, CLASSES, "train/"), **class_folders(x[y == 0], y[y == 0], CLASSES, "test/")}
    box.fails(zip_of(files), "class 'b' has no images in the test split")


def test_fewer_than_two_classes(box: Sandbox):
    x, y = bars(10, seed=6, classes=2)
    box.fails(zip_of(class_folders(x, np.zeros_like(y), CLASSES)), "at least 2 classes; found only 'a'")


@pytest.mark.parametrize("archive", [zip_of({}), tar_of({}), tar_of({}, mode="w:gz")], ids=["zip", "tar", "tar.gz"])
def test_empty_archives(box: Sandbox, archive: bytes):
    box.fails(archive, "holds no files")


def test_only_folders_or_files_outside_class_folders(box: Sandbox):
    folder = tarfile.TarInfo("a")
    folder.type = tarfile.DIRTYPE
    box.fails(tar_with([folder]), "holds no files")
    box.fails(zip_of({"1.png": png(np.zeros((28, 28))), "2.png": png(np.zeros((28, 28)))}),
              "no images inside class folders")


def test_not_an_archive(box: Sandbox):
    box.fails(b"just some text, not an archive at all" * 20, "not a .zip, .tar or .tar.gz archive")
    box.fails(png(np.zeros((28, 28))), "not a .zip, .tar or .tar.gz archive")
    box.fails(gzip.compress(png(np.zeros((28, 28))) * 3), "does not hold a tar archive")


def test_damaged_archives(box: Sandbox, good):
    archive = zip_of(good)
    box.fails(archive[: len(archive) // 2], "zip archive is damaged")
    gz = tar_of(good, mode="w:gz")
    box.fails(gz[: len(gz) // 2], "stream is damaged")


def test_duplicate_member_names(box: Sandbox, good):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate it writes
        archive = zip_named(good, next(iter(good)))
    box.fails(archive, f"'{next(iter(good))}' appears twice")


def _central_entry(archive: bytes, name: str) -> int:
    """Offset of `name`'s central directory entry."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        start = z.start_dir
    position = start
    while archive[position:position + 4] == b"PK\x01\x02":
        n, extra, comment = struct.unpack("<3H", archive[position + 28:position + 34])
        if archive[position + 46:position + 46 + n].decode() == name:
            return position
        position += 46 + n + extra + comment
    raise KeyError(name)


def test_a_zip_member_that_lies_about_its_size_is_read_no_further(box: Sandbox, good):
    archive = bytearray(zip_of({**good, "a/evil.png": bytes(3 << 20)}, compression=zipfile.ZIP_DEFLATED))
    entry = _central_entry(bytes(archive), "a/evil.png")
    local = struct.unpack("<L", archive[entry + 42:entry + 46])[0]
    for at in (entry + 24, local + 22):  # uncompressed size, in the central and the local header
        archive[at:at + 4] = struct.pack("<L", 10)
    # Read in bounded steps, it fails as damaged (zipfile's CRC check, or ours of the size) without ever
    # holding the 3 MiB it expands to beyond its 10 declared bytes.
    box.fails(bytes(archive), "'a/evil.png' (cannot be read: Bad CRC|is not the size the archive says)")


def test_zip_methods_that_decompress_unbounded_are_refused(box: Sandbox, good):
    box.fails(zip_of({**good, "a/evil.png": bytes(1000)}, compression=zipfile.ZIP_BZIP2),
              "compressed with method 12")


def test_a_zip_whose_end_record_understates_its_entries(box: Sandbox):
    archive = bytearray(zip_of({f"{c}/{i}.png": b"x" for c in "ab" for i in range(150)}))
    end = archive.rfind(b"PK\x05\x06")
    archive[end + 8:end + 12] = struct.pack("<2H", 1, 1)  # "one entry"
    box.fails(bytes(archive), "more than 200 members")


def test_tar_extended_headers_are_bounded(box: Sandbox, good):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in good.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("a/evil.png")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        t.addfile(info, io.BytesIO(b""))
    box.fails(out.getvalue(), "extended header of")


def test_huge_integer_labels_fail_at_once(box: Sandbox):
    x, y = bars(10, seed=2, classes=2)
    files = csv_layout(x, y, None)
    box.fails(zip_of({**files, "labels.csv": files["labels.csv"] + b"00000.png,99999999999\n"}),
              "is named twice|not a class index")
    huge = files["labels.csv"].replace(b",1\n", b",99999999999\n", 1)
    box.fails(zip_of({**files, "labels.csv": huge}), "label 99999999999 is not a class index")


def test_zip64_archives_are_counted_too(tmp_path: Path):
    """More than 65,535 entries: the central directory sits before the zip64 end records."""
    path = tmp_path / "many.zip"
    path.write_bytes(zip_of({f"a/{i}.png": b"" for i in range(70_000)}))
    roomy = Limits(max_members=100_000, max_uncompressed_bytes=1 << 20, max_ratio=100, max_member_bytes=1 << 20)
    with open_archive(path, limits=roomy, scratch=tmp_path / "scratch") as archive:
        assert len(archive.members) == 70_000
    tight = Limits(max_members=69_999, max_uncompressed_bytes=1 << 20, max_ratio=100, max_member_bytes=1 << 20)
    with pytest.raises(ArchiveRejected, match="more than 69999 members"):
        open_archive(path, limits=tight, scratch=tmp_path / "scratch")
