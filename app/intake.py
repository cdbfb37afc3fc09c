"""Bringing tagged images into a session folder: uploaded images and zips are copied / extracted there, tags come
from a CSV/JSON file, a zip with one folder per tag, or the page's table; reading and checking is
``wilss.tags.read_tagged_folder`` (the CLI's ``--images DIR [--tags FILE]``) on that folder.

Every problem raises ``wilss.data.DataError`` with a message for the page; the caller stages into a fresh
folder, so a failure leaves the session's data as it was.
"""
from __future__ import annotations

import csv
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from wilss.data import IMAGE_SUFFIXES, DataError, listing, validate_images
from wilss.step_masks import mask_path, read_step_masks
from wilss.tags import TAG_FILES, TaggedSet, check_tag_row, inside_folder, read_tagged_folder

TAG_SUFFIXES = (".csv", ".json")
MAX_ZIP_MEMBERS = 50_000
TABLE_FILE = "tags_table.csv"


# ----------------------------------------------------------------------------------------------- uploads
def safe_extract(archive: Path, dest: Path, *, max_bytes: int) -> list[Path]:
    """Extract image and tags files of a zip into ``dest``, refusing members that would land outside it, links,
    and archives that unpack to more than ``max_bytes`` (zip bombs). Hidden files and ``__MACOSX`` are skipped."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"'{archive.name}' is not a readable zip file ({err}). Re-create the zip.") from None
    written = []
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise DataError(f"'{archive.name}' holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted.")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise DataError(f"'{archive.name}' unpacks to {total / 2**20:.0f} MB, more than the "
                            f"{max_bytes / 2**20:.0f} MB allowed. Upload fewer or smaller images.")
        for member in members:
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if member.is_dir() or not parts:
                continue
            if member.filename.startswith("/") or ".." in parts or ":" in parts[0]:
                raise DataError(f"'{archive.name}' contains the path '{member.filename}', which points outside "
                                "the archive; refusing it. Zip the images with relative paths.")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"'{archive.name}' contains a symbolic link ('{member.filename}'); refusing it.")
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            suffix = PurePosixPath(parts[-1]).suffix.lower()
            if suffix not in IMAGE_SUFFIXES and parts[-1].lower() not in TAG_FILES:
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)   # reads at most the declared size, then checks the CRC
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                # a damaged member, sizes in the headers that understate the data (Bad CRC-32), an unsupported
                # compression method, or a password
                raise DataError(f"'{archive.name}' is damaged or unsupported: its file '{member.filename}' could not "
                                f"be unpacked ({err}). Re-create the zip (without a password).") from None
            written.append(target)
    if not written:
        raise DataError(f"'{archive.name}' contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return written


def gather_uploads(files: Sequence[Path], dest: Path, *, max_bytes: int) -> None:
    """Copy uploaded images into ``dest`` and extract uploaded zips there. Non-image files are refused."""
    if not files:
        raise DataError("No files were given. Upload images (several at once) or a zip of images.")
    files = [Path(f) for f in files]
    others = [f.name for f in files if f.suffix.lower() not in IMAGE_SUFFIXES | {".zip"}]
    if others:
        raise DataError(f"{len(others)} uploaded file(s) are neither images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                        f"nor zips: {listing(others, quoted=True)}. Upload tags files (.csv/.json) in the 'tags file' "
                        "box.")
    names = [f.name for f in files if f.suffix.lower() != ".zip"]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise DataError(f"Several uploaded images share a name ({listing(twins, quoted=True)}); tags are given per "
                        "file name, so rename them or put them in a zip with folders.")
    for f in files:
        if f.suffix.lower() == ".zip":
            safe_extract(f, dest, max_bytes=max_bytes)
        else:
            shutil.copyfile(f, dest / f.name)


def data_root(folder: Path, *, tags_given: bool = False) -> Path:
    """``folder``, or its single sub-folder when a zip wrapped everything in one folder (``samples/...``).

    A lone folder is a wrapper when it holds a tags file, sub-folders, or when a tags file was uploaded apart;
    otherwise it is the one tag folder of the one-folder-per-tag layout and is kept (its name is the tag)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        wraps = tags_given or any((inner / n).is_file() for n in TAG_FILES) or any(p.is_dir() for p in inner.iterdir())
        if wraps:
            return inner
    return folder


def bring_tagged(files: Sequence[Path], tags_file: Optional[Path], dest: Path, *,
                 max_bytes: int) -> tuple[TaggedSet, Path]:
    """Stage uploads into the empty folder ``dest`` and read them: (the ``TaggedSet``, the folder its file names
    are relative to, ``dest`` or a zip's wrapper folder in it).

    Tags: ``tags_file`` when given, else a ``tags.csv``/``tags.json`` inside the upload, else one folder per tag
    (images outside any folder, or in ``none/``, are negatives). Every image is decoded once to catch damage now.
    """
    gather_uploads(files, dest, max_bytes=max_bytes)
    root = data_root(dest, tags_given=tags_file is not None)
    chosen = None
    if tags_file is not None:
        tags_file = Path(tags_file)
        if tags_file.suffix.lower() not in TAG_SUFFIXES:
            raise DataError(f"The tags file '{tags_file.name}' must be a .csv or a .json file.")
        chosen = root / f"uploaded_tags{tags_file.suffix.lower()}"
        shutil.copyfile(tags_file, chosen)
    tagged = read_tagged_folder(root, chosen)
    validate_images(tagged.paths, full=True)
    return tagged, root


def bring_step_masks(files: Sequence[Path], dest: Path, tagged: TaggedSet, images_root: Path, *,
                     class_names: Sequence[str], num_old: int, max_bytes: int) -> tuple[TaggedSet, tuple[Path, ...]]:
    """Stage uploaded pixel masks of the tagged images (``NAME.png`` per image ``NAME.*``, or a zip keeping the
    images' folders) in the empty folder ``dest`` and read them as ``add-class --masks`` does
    (``wilss.step_masks.read_step_masks``: one per image, of its size, ids of ``class_names`` or 255). Returns the
    images with their tags read from the masks, and the mask files. Raises ``DataError``."""
    gather_uploads(files, dest, max_bytes=max_bytes)
    root = dest
    if not mask_path(images_root, tagged.paths[0], dest).is_file():
        root = data_root(dest, tags_given=True)   # a zip that wraps the masks in one folder
    tagged, masks = read_step_masks(tagged, images_root, root, class_names=class_names, num_old=num_old)
    return tagged, tuple(masks)


# ------------------------------------------------------------------------------------------------- table
def table_rows(tagged: TaggedSet, root: Path) -> list[list[str]]:
    """``[[filename, 'tag1;tag2'], ...]`` with file names relative to ``root`` (what a tags.csv would hold)."""
    return [[_relative(p, root), ";".join(sorted(t))] for p, t in zip(tagged.paths, tagged.tags)]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def apply_table(rows: Sequence[Sequence[object]], root: Path) -> TaggedSet:
    """Write the page's table as ``root/tags_table.csv`` and read the folder with it (the engine checks that
    every named file exists and opens)."""
    clean = []
    for row in rows:
        cells = ["" if c is None or c != c else str(c).strip() for c in list(row)[:2]] + ["", ""]
        if cells[0] or cells[1]:
            clean.append(cells[:2])
    if not clean:
        raise DataError("The tags table is empty. Upload images first, then edit their tags.")
    unnamed = [tags for name, tags in clean if not name]
    if unnamed:
        raise DataError(f"A row of the tags table has tags ({unnamed[0]!r}) but no file name. Fill in the file name "
                        "or delete the row.")
    for number, (name, tags) in enumerate(clean, 1):   # the engine's checks, with the row as the page numbers it
        where = f"Row {number} of the tags table"
        check_tag_row(where, name, tags.split(";"))
        inside_folder(root, root / name, where)
    path = root / TABLE_FILE
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "tags"])
        writer.writerows(clean)
    try:
        return read_tagged_folder(root, path)
    except DataError as err:   # e.g. a file name typed that was never uploaded: name the table, not server paths
        raise DataError(str(err).replace(f"'{path}'", "the tags table").replace(f"'{root}'", "your images")) from None


# ----------------------------------------------------------------------------------------------- summary
def tag_summary(tagged: TaggedSet, known_classes: Sequence[str]) -> tuple[list[list[object]], list[str]]:
    """Rows ``[tag, images, role]`` (plus the negatives row) and warnings for the page.

    A tag the model does not know is a candidate new class; it needs images without it (negatives), since the
    method contrasts images with and without each new class.
    """
    known = set(known_classes)
    counts = tagged.counts()
    rows: list[list[object]] = [[tag, n, "known class (hint)" if tag in known else "new class"]
                                for tag, n in counts.items()]
    rows.append(["(none: negatives)", tagged.num_negatives, "tagged with none of the classes"])
    warnings = []
    total = len(tagged)
    for tag, n in counts.items():
        if tag not in known and n == total:
            warnings.append(f"Every image is tagged '{tag}', so there are no negatives for it: add images that "
                            f"do not show a {tag} (tagged with none of the new classes).")
    if not any(tag not in known for tag in counts):
        warnings.append("No image is tagged with a class the model does not know yet: tag the images showing the "
                        "new class (in the table below, or with a tags file).")
    return rows, warnings
