"""Image-level tags: a folder of images with tags.csv, tags.json or one sub-folder per tag, read and checked
(every tag row names a file inside the folder), and the checks an update makes of them."""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from wilss.config import UpdateConfig
from wilss.conventions import BACKGROUND_NAME
from wilss.data import IMAGE_SUFFIXES, DataError, PathLike, list_images, listing, validate_images

logger = logging.getLogger(__name__)

NEGATIVE_DIRS = frozenset({"none", "negative", "negatives"})
TAG_FILES = ("tags.csv", "tags.json")
CSV_HELP = ("a header line 'filename,tags', then one line per image such as 'cow1.jpg,cow' or "
            "'farm.jpg,cow;sheep' (tags separated by ';'; leave the tags empty for an image that shows "
            "none of the classes)")
JSON_HELP = ('either {"cow1.jpg": ["cow"], "street.jpg": []} or '
             '[{"filename": "cow1.jpg", "tags": ["cow"]}, {"filename": "street.jpg", "tags": []}]')
NEGATIVES_HOW = ("How to add them: with one sub-folder per tag, put them in a sub-folder named 'none' "
                 "(or directly in the top folder); with tags.csv, add lines with an empty tags column, "
                 "e.g. 'street.jpg,'; with tags.json, give them an empty list, e.g. \"street.jpg\": [].")




# ----------------------------------------------------------------------------------------- tagged data
@dataclass(frozen=True)
class TaggedSet:
    """Images with image-level tags. ``tags[i]`` is the set of class names shown in ``paths[i]``
    (empty: a negative image, showing none of the classes being learned)."""

    paths: tuple[Path, ...]
    tags: tuple[frozenset[str], ...]

    def __post_init__(self):
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        object.__setattr__(self, "tags", tuple(frozenset(t) for t in self.tags))
        if len(self.paths) != len(self.tags):
            raise ValueError(f"{len(self.paths)} paths but {len(self.tags)} tag sets")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_names(self) -> tuple[str, ...]:
        """All tags that occur, sorted."""
        return tuple(sorted(set().union(*self.tags)))

    def counts(self) -> dict[str, int]:
        """Tag -> number of images carrying it (sorted by tag)."""
        return {c: sum(c in t for t in self.tags) for c in self.class_names}

    @property
    def num_negatives(self) -> int:
        return sum(not t for t in self.tags)

    def multi_hot(self, classes: Sequence[str]) -> np.ndarray:
        """``N x K`` float32 targets, ``[i, k] = 1`` when image i is tagged ``classes[k]``."""
        rows = [[c in t for c in classes] for t in self.tags]
        return np.array(rows, dtype=np.float32).reshape(len(self), len(classes))


def _split_tags(tags: Union[str, Iterable[str], None]) -> frozenset[str]:
    items = tags.split(";") if isinstance(tags, str) else (tags or [])
    return frozenset(s for s in (str(t).strip() for t in items) if s)


Row = tuple[str, str, frozenset[str]]   # (where it was read, e.g. "line 3 of 'tags.csv'", file name, tags)


def _read_csv(path: Path) -> list[Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel writes a byte-order mark
    except UnicodeDecodeError as err:
        raise DataError(f"The tags file '{path}' is not UTF-8 text ({err}). Save it as UTF-8 CSV.") from err
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
        if [h.strip().lower() for h in header] != ["filename", "tags"]:
            raise DataError(f"The tags file '{path}' must start with the header 'filename,tags' (found "
                            f"{','.join(header)[:80]!r}). Expected {CSV_HELP}.")
        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) > 2 and any(c.strip() for c in row[2:]):
                raise DataError(f"Line {reader.line_num} of '{path}' has {len(row)} columns: separate several "
                                f"tags with ';', not ',' (e.g. 'farm.jpg,cow;sheep'). Expected {CSV_HELP}.")
            rows.append((f"Line {reader.line_num} of '{path}'", row[0].strip(),
                         _split_tags(row[1] if len(row) > 1 else "")))
    except csv.Error as err:   # e.g. a field over csv's size limit
        raise DataError(f"Line {reader.line_num} of '{path}' cannot be read as CSV ({err}). Expected {CSV_HELP}.") \
            from None
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"The tags file '{path}' is not valid JSON ({err}). Expected {JSON_HELP}.") from err
    except RecursionError:   # e.g. [[[[...]]]] nested 100,000 deep
        raise DataError(f"The tags file '{path}' is nested too deeply to be a tags file. Expected {JSON_HELP}.") \
            from None
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list) and all(isinstance(e, dict) and "filename" in e for e in data):
        pairs = [(e["filename"], e.get("tags")) for e in data]
    else:
        raise DataError(f"The tags file '{path}' has an unexpected structure. Expected {JSON_HELP}.")
    for name, tags in pairs:
        if not isinstance(name, str) or not (tags is None or isinstance(tags, str) or
                                             (isinstance(tags, list) and all(isinstance(t, str) for t in tags))):
            raise DataError(f"In '{path}', the entry {_shown(name)}: {_shown(tags)} is not a file name with a list "
                            f"of tag strings. Expected {JSON_HELP}.")
    return [(f"Entry {i} of '{path}'", name.strip(), _split_tags(tags)) for i, (name, tags) in enumerate(pairs, 1)]


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message quotes the user's input, not megabytes of it)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_tag_row(where: str, name: str, tags: Iterable[str] = ()) -> None:
    """Refuse a tag row whose file name could reach outside the images folder or whose text cannot be a name:
    an absolute path, a drive ('C:'), a '..' part, or a control character (a NUL byte, a line break) in the file
    name or a tag. ``where`` names the row for the message ("Line 3 of 'tags.csv'", "Row 2 of the tags table").

    The message quotes what the row says and never whether such a path exists on this machine. Links that lead
    out of the folder are caught by ``inside_folder`` (they need the folder)."""
    for text, what in [(name, "file name")] + [(t, "tag") for t in tags]:
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise DataError(f"{where}: the {what} {_shown(text)} contains a control character (such as a NUL byte "
                            "or a line break). Remove it.")
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or PureWindowsPath(name).drive or (parts and ":" in parts[0]):
        raise DataError(f"{where}: the file name {_shown(name)} is an absolute path. File names in tags are "
                        "relative to the images folder, e.g. 'cow1.jpg' or 'cows/cow1.jpg'.")
    if ".." in parts:
        raise DataError(f"{where}: the file name {_shown(name)} goes up a folder ('..'). File names in tags must "
                        "name files inside the images folder, e.g. 'cow1.jpg' or 'cows/cow1.jpg'.")


def inside_folder(folder: Path, path: Path, where: str) -> Path:
    """``path``, when it resolves (links followed) to a place inside ``folder``; else a DataError naming ``where``
    and the path relative to the folder (nothing about where the link leads, or whether its target exists)."""
    if not Path(path).resolve().is_relative_to(Path(folder).resolve()):
        shown = _relative_text(path, folder)
        raise DataError(f"{where}: '{shown}' is a link to a file outside the images folder; refusing it. Copy the "
                        "image into the folder instead.")
    return path


def _relative_text(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return Path(path).name


def _merge(entries: Iterable[tuple[str, Path, frozenset[str]]]) -> tuple[list[Path], list[frozenset[str]]]:
    """Entries sharing a key (file name) become one image carrying the union of their tags."""
    merged: dict[str, tuple[Path, frozenset[str]]] = {}
    for key, path, tags in entries:
        if key in merged:
            logger.info("'%s' is listed more than once; it gets all its tags together", key)
            merged[key] = (merged[key][0], merged[key][1] | tags)
        else:
            merged[key] = (path, tags)
    return [p for p, _ in merged.values()], [t for _, t in merged.values()]


def _from_tags_file(folder: Path, tags_file: Path) -> TaggedSet:
    suffix = tags_file.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise DataError(f"The tags file '{tags_file}' must end in .csv or .json.")
    rows = _read_csv(tags_file) if suffix == ".csv" else _read_json(tags_file)
    if any(not name for _, name, _ in rows):
        raise DataError(f"The tags file '{tags_file}' has an entry with no file name. "
                        f"Expected {CSV_HELP if suffix == '.csv' else JSON_HELP}.")
    for where, name, tags in rows:
        check_tag_row(where, name, tags)
    for where, name, _ in rows:   # before any file is looked at: nothing is said about what lies outside
        inside_folder(folder, folder / name, where)
    paths, tags = _merge((name, folder / name, t) for _, name, t in rows)
    missing = [str(p.relative_to(folder)) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"The tags file '{tags_file}' names {len(missing)} file(s) that are not in "
                        f"'{folder}': {listing(missing)}. Add the images or remove those lines.")
    listed = {p.resolve() for p in paths}
    unlisted = [p.relative_to(folder).as_posix() for p in list_images(folder) if p.resolve() not in listed]
    if unlisted:
        logger.warning("%d image(s) in '%s' are not in '%s' and are ignored: %s", len(unlisted), folder,
                       tags_file.name, listing(unlisted))
    return TaggedSet(tuple(paths), tuple(tags))


def _from_subfolders(folder: Path) -> TaggedSet:
    entries = [(p.name, p, frozenset()) for p in list_images(folder, recursive=False)]
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))):
        tag = sub.name.strip()
        tags = frozenset() if tag.lower() in NEGATIVE_DIRS or not tag else frozenset({tag})
        entries += [(p.relative_to(sub).as_posix(), p, tags) for p in list_images(sub)]
    for _, path, tags in entries:   # a folder name is a tag; a link must not lead out of the folder
        check_tag_row(f"In '{folder}'", "", tags)
        inside_folder(folder, path, f"In '{folder}'")
    paths, tags = _merge(entries)
    return TaggedSet(tuple(paths), tuple(tags))


def read_tagged_folder(folder: PathLike, tags_file: Optional[PathLike] = None) -> TaggedSet:
    """Read images and their tags from one of three layouts.

    (a) ``folder`` + a CSV ``filename,tags`` (tags separated by ';', empty = negative);
    (b) ``folder`` + a JSON ``{"name": [tags]}`` or ``[{"filename": ..., "tags": [...]}]``;
    (c) no tags file: one sub-folder per tag; ``none/``, ``negative(s)/`` and top-level images are negatives.
    With ``tags_file=None``, ``folder/tags.csv`` or ``folder/tags.json`` is used when present.
    Every image is checked to open (``validate_images``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"The image folder '{folder}' does not exist (or is not a folder). Check the path.")
    if tags_file is None:
        found = [folder / n for n in TAG_FILES if (folder / n).is_file()]
        if len(found) > 1:
            raise DataError(f"'{folder}' has both tags.csv and tags.json: keep one, or name the one to use.")
        tags_file = found[0] if found else None
    elif not Path(tags_file).is_file() and (folder / tags_file).is_file():
        tags_file = folder / tags_file
    if tags_file is not None and not Path(tags_file).is_file():
        raise DataError(f"The tags file '{tags_file}' does not exist. Check the path.")
    tagged = _from_subfolders(folder) if tags_file is None else _from_tags_file(folder, Path(tags_file))
    if len(tagged) == 0:
        raise DataError(f"No images found in '{folder}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))}). "
                        "Add images, in tag sub-folders or listed in tags.csv / tags.json.")
    validate_images(tagged.paths)
    return tagged


def check_new_classes(tagged: TaggedSet, new_classes: Sequence[str], existing_classes: Sequence[str]) -> None:
    """Check that ``tagged`` can teach ``new_classes`` to a model that knows ``existing_classes``.

    Tags naming existing classes are allowed (the relaxed setting); each new class needs positive images
    (negatives: see ``settle_negatives``).
    """
    new_classes = [name.strip() for name in new_classes]  # tags are stripped too
    existing = {c.strip().lower() for c in existing_classes} | {BACKGROUND_NAME}
    seen: set[str] = set()
    for name in new_classes:
        key = name.strip().lower()
        if not key:
            raise DataError("A new class name is empty. Give every new class a name.")
        if key in existing:
            raise DataError(f"The class '{name}' already exists in the model. Choose another name, or "
                            "remove it from the new classes (its tags may still be given as hints).")
        if key in seen:
            raise DataError(f"The new class '{name}' is given twice. List each new class once.")
        seen.add(key)
    if len(tagged) == 0:
        raise DataError("There are no images. Add tagged images for the new classes.")
    known = set(new_classes) | set(existing_classes)
    for tag in tagged.class_names:
        if tag not in known:
            close = [c for c in known if c.lower() == tag.lower()]
            hint = f" Did you mean '{close[0]}'? Tags are case-sensitive." if close else ""
            raise DataError(f"Unknown tag '{tag}': it is neither a new class ({', '.join(new_classes)}) nor a "
                            f"class the model knows. Fix the tag, or add '{tag}' to the new classes.{hint}")
    counts = tagged.counts()
    for name in new_classes:
        if counts.get(name, 0) == 0:
            raise DataError(f"The new class '{name}' has no images tagged with it. Add images showing it.")


def classes_without_negatives(tagged: TaggedSet, new_classes: Sequence[str]) -> list[str]:
    """The new classes that every image is tagged with (no image to contrast them with)."""
    counts = tagged.counts()
    return [name for name in new_classes if counts.get(name, 0) == len(tagged)]


def settle_negatives(tagged: TaggedSet, new_classes: Sequence[str], cfg: UpdateConfig) -> tuple[UpdateConfig, str]:
    """Beyond the paper: learn a new class that has no negatives. Returns the config to train with and a note.

    l_CLS learns a class by contrasting images that show it with images that do not; when every image shows it
    and no old-class tags are given (the relaxed setting), the old classes' tags are read from the old model's
    confident predictions instead (``auto_old_tags``), which keeps l_CLS from being trivially satisfied.
    """
    lacking = classes_without_negatives(tagged, new_classes)
    if not lacking or cfg.relaxed or cfg.auto_old_tags:
        return cfg, ""
    names = ", ".join(f"'{n}'" for n in lacking)
    note = (f"Every image is tagged {names}, so there are no negatives for it. The method learns a class by "
            "contrasting images that contain it with images that do not, so the old classes' tags are read from "
            "the base model's confident predictions instead (automatic relaxed setting). Negatives usually give "
            f"a better result: add images tagged with none of the new classes. {NEGATIVES_HOW}")
    return replace(cfg, auto_old_tags=True), note
