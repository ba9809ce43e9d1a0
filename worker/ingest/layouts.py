"""Which image has which label: the two layouts of the tutorials, read from an archive's member list.

- class folders: `<class>/<image>`, optionally under `train/` and `test/` (torchvision's ImageFolder);
- CSV + images: a CSV of `file,label` (with or without a header; label a class name or an index) and the
  images it names, beside it or in one folder beside it (the datasets tutorial's CustomImageDataset);
  optionally a second CSV, named test*.csv, for the test split; optionally `classes.txt`, one class name
  per line, giving the class order (and the names of integer labels).

Classes are sorted by name unless classes.txt orders them. Images are sorted by their path in their class
folder (or relative to the CSV's image folder), then by class (store_order), so the same images give the
same dataset whatever the archive's or the CSV's order.
"""

import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from spec.datasets import MAX_CLASSES
from worker.ingest.archives import ArchiveRejected, Member, normalize

Layout = Literal["class_folders", "csv"]
SYSTEM_FILES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
CLASSES_FILE = "classes.txt"
FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_path", "path", "img", "name")
LABEL_COLUMNS = ("label", "class", "class_name", "target", "category", "y")
MAX_EXAMPLES = 10
# The image folder is found from the first of these rows whose file exists (the others are then checked).
FOLDER_PROBE_ROWS = 20


def store_order(item: "Item") -> tuple[str, int]:
    """Images are stored by file name (within its class folder, or relative to the CSV's images), then class:
    numbered exports interleave the classes (as the original files of MNIST-like datasets do), so even an
    unshuffled job does not see one class after another; and an export keeps its original order."""
    return item.key, item.label


class LayoutRejected(ArchiveRejected):
    """The archive's contents do not make a labelled dataset; the message says what to change."""


@dataclass(frozen=True)
class Item:
    member: Member
    label: int
    key: str  # sort key within its class: the path inside the class folder, or relative to the CSV's images


@dataclass
class SkipLog:
    """Files left out, by reason, with a few example paths each."""

    reasons: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, reason: str, path: str) -> None:
        examples = self.reasons.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(path)
        self.counts[reason] += 1

    def as_json(self) -> list[dict[str, object]]:
        return [{"reason": r, "count": self.counts[r], "examples": ex} for r, ex in self.reasons.items()]


@dataclass(frozen=True)
class Labelled:
    layout: Layout
    classes: list[str]
    train: list[Item]
    test: list[Item] | None  # None: the archive has no test part


Read = Callable[[Member], bytes]


def find_layout(members: list[Member], read: Read, skipped: SkipLog) -> Labelled:
    """Label the archive's images by whichever layout it uses; LayoutRejected says why it fits neither."""
    files = _strip_common_folders([m for m in members if not _system_file(m, skipped)])
    classes_file = next((m for m, p in files if p == CLASSES_FILE), None)
    files = [(m, p) for m, p in files if p != CLASSES_FILE]
    listed = _classes_txt(read(classes_file)) if classes_file is not None else None
    if not files:
        raise LayoutRejected("the archive holds no files (only folders, or nothing at all)")
    csvs = [(m, p) for m, p in files if p.lower().endswith(".csv")]
    labelled = _from_csv(files, csvs, read, listed, skipped) if csvs else _from_folders(files, listed, skipped)
    _check_classes(labelled)
    return labelled


def _system_file(member: Member, skipped: SkipLog) -> bool:
    """macOS and Windows leave these in archives; they are never part of a dataset."""
    parts = member.path.split("/")
    if any(p.startswith(".") or p in SYSTEM_FILES for p in parts):
        skipped.add("system file (hidden, __MACOSX, Thumbs.db)", member.path)
        return True
    return False


def _strip_common_folders(members: list[Member]) -> list[tuple[Member, str]]:
    """(member, path) with the folders every member shares removed: `mydata/train/cat/1.png` -> `train/...`.

    Only while something stays in a folder: `cat/1.png, cat/2.png` is one class, not two loose files."""
    parts = [m.path.split("/") for m in members]
    depth = 0
    while (parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1
           and any(len(p) > depth + 2 for p in parts)):
        depth += 1
    return [(m, "/".join(p[depth:])) for m, p in zip(members, parts, strict=True)]


def _classes_txt(data: bytes) -> list[str]:
    names = [line.strip() for line in _text(data, CLASSES_FILE).splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise LayoutRejected(f"{CLASSES_FILE} names a class twice")
    return names


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LayoutRejected(f"{name} is not UTF-8 text") from None


def _class_index(names: list[str], listed: list[str] | None, where: str) -> dict[str, int]:
    if listed is None:
        return {name: i for i, name in enumerate(sorted(names))}
    unknown = sorted(set(names) - set(listed))
    if unknown:
        raise LayoutRejected(f"{where} {', '.join(map(repr, unknown[:5]))} not in {CLASSES_FILE} (unknown labels)")
    return {name: i for i, name in enumerate(listed)}


# --- class folders -----------------------------------------------------------------------------

def _from_folders(files: list[tuple[Member, str]], listed: list[str] | None, skipped: SkipLog) -> Labelled:
    # Train/ and TEST/ are train/ and test/ too (never two classes named like splits).
    files = [(m, _split_folder_lowercase(p)) for m, p in files]
    tops = {p.split("/")[0] for _, p in files if "/" in p}
    if "train" in tops:
        extra = sorted(tops - {"train", "test"})
        if extra:
            raise LayoutRejected(f"found the folder {extra[0]!r} beside train/: put the class folders under train/ "
                                 "and test/ only (rename a validation folder to test/)")
        parts = {"train": _class_items(files, "train/", skipped), "test": _class_items(files, "test/", skipped)}
        for member, path in files:
            if "/" not in path:
                skipped.add("not inside a class folder", member.path)
        if not parts["test"] and "test" in tops:
            raise LayoutRejected("test/ holds no class folders with images")
    elif tops == {"test"}:
        raise LayoutRejected("found test/ but no train/: put the training images in train/<class>/")
    else:
        parts = {"train": _class_items(files, "", skipped), "test": []}
    names = sorted({c for items in parts.values() for c, _, _ in items})
    if not names:
        raise LayoutRejected("found no images inside class folders: put each class's images in a folder named "
                             "after the class (<class>/<image>, optionally under train/ and test/), or add a CSV "
                             "of file,label")
    index = _class_index(names, listed, "class folders")
    classes = listed if listed is not None else names

    def items(part: str) -> list[Item]:
        return sorted((Item(m, index[c], key) for c, m, key in parts[part]), key=store_order)

    return Labelled("class_folders", classes, items("train"), items("test") or None)


def _split_folder_lowercase(path: str) -> str:
    top, _, rest = path.partition("/")
    return f"{top.lower()}/{rest}" if rest and top.lower() in ("train", "test") else path


def _class_items(files: list[tuple[Member, str]], prefix: str, skipped: SkipLog) -> list[tuple[str, Member, str]]:
    """(class, member, path within the class folder) of the files under `prefix`."""
    found = []
    for member, path in files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        if "/" not in rest:
            skipped.add("not inside a class folder", member.path)
            continue
        label, key = rest.split("/", 1)
        if "/" in key:
            raise LayoutRejected(f"{member.path!r}: the class folder {prefix}{label}/ holds folders, not only images: "
                                 "put each class's images directly in its folder (<class>/<image>, optionally "
                                 "under train/ and test/)")
        found.append((label, member, key))
    return found


# --- CSV + images ------------------------------------------------------------------------------

def _from_csv(files: list[tuple[Member, str]], csvs: list[tuple[Member, str]], read: Read,
              listed: list[str] | None, skipped: SkipLog) -> Labelled:
    tests = [c for c in csvs if "test" in PurePosixPath(c[1]).stem.lower()]
    trains = [c for c in csvs if c not in tests]
    if len(trains) != 1 or len(tests) > 1:
        names = ", ".join(p for _, p in csvs)
        raise LayoutRejected(f"found the CSV files {names}: give one CSV of file,label for training and at most "
                             "one more, named test*.csv, for testing")
    by_path = {p: m for m, p in files}
    rows = {"train": _csv_rows(read(trains[0][0]), trains[0][1], by_path)}
    if tests:
        rows["test"] = _csv_rows(read(tests[0][0]), tests[0][1], by_path)
    named = {m.path for part in rows.values() for _, m, _, _ in part}
    for member, path in files:
        if member.path not in named and (member, path) not in csvs:
            skipped.add("not named by the CSV", member.path)

    labels = [label for part in rows.values() for _, _, _, label in part]
    if all(re.fullmatch(r"-?[0-9]+", label) for label in labels):
        # Integer labels are class indices ("07" is 7): classes.txt names them, else they are "0", "1", ...
        count = len(listed) if listed is not None else min(max(int(label) for label in labels) + 1, MAX_CLASSES)
        bad = [(where, label) for part in rows.values() for where, _, _, label in part
               if not 0 <= int(label) < count]
        if bad:
            raise LayoutRejected(f"{bad[0][0]}: label {bad[0][1]} is not a class index (0 to {count - 1}); "
                                 f"{len(bad)} such row(s) (unknown labels)")
        classes = listed if listed is not None else [str(i) for i in range(count)]
        index = {label: int(label) for label in labels}
    else:
        train_names = sorted({label for _, _, _, label in rows["train"]})
        index = _class_index(train_names, listed, "the training CSV's labels")
        classes = listed if listed is not None else train_names
        for where, _, _, label in rows.get("test", []):
            if label not in index:
                raise LayoutRejected(f"{where}: label {label!r} is not a class of the training CSV (unknown labels)")

    def items(part: str) -> list[Item]:
        return sorted((Item(m, index[label], key) for _, m, key, label in rows[part]), key=store_order)

    return Labelled("csv", classes, items("train"), items("test") if tests else None)


def _csv_rows(data: bytes, csv_path: str, by_path: dict[str, Member]) -> list[tuple[str, Member, str, str]]:
    """(where, member, path relative to the image folder, label) for each row of the CSV."""
    name = PurePosixPath(csv_path).name
    try:
        table = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(_text(data, name))), start=1)
                 if any(cell.strip() for cell in row)]
    except csv.Error as e:
        raise LayoutRejected(f"{name} is not a valid CSV: {e}") from None
    if not table:
        raise LayoutRejected(f"{name} is empty")
    folder = str(PurePosixPath(csv_path).parent).removeprefix(".")
    header = [cell.strip().lower() for cell in table[0][1]]
    file_col = next((header.index(c) for c in FILE_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    named_header = file_col is not None and label_col is not None
    if named_header:
        table = table[1:]
    else:
        file_col, label_col = 0, 1
    assert file_col is not None and label_col is not None
    if not named_header and table and _image_folder(table[:1], file_col, folder, by_path, name) is None \
            and _image_folder(table[1:2], file_col, folder, by_path, name) is not None:
        table = table[1:]  # an unnamed header: its "file" is nowhere, the next row's is
    base = _image_folder(table, file_col, folder, by_path, name)
    if base is None:
        raise LayoutRejected(f"{name}: none of the first rows names a file in the archive (file paths are read "
                             f"relative to the CSV's folder, or to one folder beside it)")
    rows: list[tuple[str, Member, str, str]] = []
    missing: list[str] = []
    seen: dict[str, int] = {}
    for line, row in table:
        where = f"{name} line {line}"
        if len(row) <= max(file_col, label_col):
            raise LayoutRejected(f"{where}: expected the columns file,label; got {row[:4]!r}")
        try:
            relative = normalize(row[file_col].strip())
        except ArchiveRejected:
            raise LayoutRejected(f"{where}: {row[file_col]!r} names a file outside the archive") from None
        member = by_path.get(f"{base}/{relative}".lstrip("/"))
        if member is None:
            missing.append(relative)
            continue
        if member.path in seen:
            raise LayoutRejected(f"{where}: {relative!r} is named twice (also on line {seen[member.path]})")
        seen[member.path] = line
        label = row[label_col].strip()
        if not label:
            raise LayoutRejected(f"{where}: the label is empty")
        rows.append((where, member, relative, label))
    if missing:
        raise LayoutRejected(f"{name} names {len(missing)} file(s) that are not in the archive, e.g. "
                             f"{', '.join(map(repr, missing[:3]))}")
    return rows


def _image_folder(table: list[tuple[int, list[str]]], file_col: int, folder: str,
                  by_path: dict[str, Member], name: str) -> str | None:
    """The folder the CSV's file paths are relative to: its own, or a folder beside it that holds the first
    of its files found (if several do: the one holding all its files, else the one named like the CSV, e.g.
    test.csv and test_images/). None if none of its first rows' files is in either."""
    for _, row in table[:FOLDER_PROBE_ROWS]:
        if len(row) <= file_col:
            continue
        try:
            entry = normalize(row[file_col].strip())
        except ArchiveRejected:
            raise LayoutRejected(f"{name}: {row[file_col]!r} names a file outside the archive") from None
        found = _folders_holding(entry, table, file_col, folder, by_path, name)
        if found is not None:
            return found
    return None


def _folders_holding(first: str, table: list[tuple[int, list[str]]], file_col: int, folder: str,
                     by_path: dict[str, Member], name: str) -> str | None:
    prefix = f"{folder}/" if folder else ""
    if f"{prefix}{first}" in by_path:
        return folder
    beside = {p[len(prefix):].split("/", 1)[0] for p in by_path if p.startswith(prefix) and "/" in p[len(prefix):]}
    found = sorted(d for d in beside if f"{prefix}{d}/{first}" in by_path)
    if len(found) > 1:
        entries = [row[file_col].strip().lstrip("/") for _, row in table if len(row) > file_col]
        found = [d for d in found if all(f"{prefix}{d}/{e}" in by_path for e in entries)] or found
    if len(found) > 1:
        stem = PurePosixPath(name).stem.lower()
        found = [d for d in found if stem in d.lower() or d.lower() in stem] or found
    if len(found) > 1:
        raise LayoutRejected(f"{name}: {first!r} is in several folders ({', '.join(found)}): keep one image folder, "
                             "or name each folder like its CSV (train.csv and train/, test.csv and test/)")
    return f"{prefix}{found[0]}" if found else None


# --- checks ------------------------------------------------------------------------------------

def _check_classes(labelled: Labelled) -> None:
    classes = labelled.classes
    if len(classes) > MAX_CLASSES:
        raise LayoutRejected(f"{len(classes)} classes; at most {MAX_CLASSES}")
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise LayoutRejected(f"a classifier needs at least 2 classes; found {found}")
    for part, items in (("train", labelled.train), ("test", labelled.test)):
        if items is not None:
            check_every_class(classes, items, part)


def check_every_class(classes: list[str], items: list[Item], part: str) -> None:
    """Every class has an image in the split, or the split cannot train (or test) it."""
    present = {i.label for i in items}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:
        raise LayoutRejected(f"class {empty[0]!r} has no images in the {part} split"
                             + (f" ({len(empty)} classes have none)" if len(empty) > 1 else ""))
