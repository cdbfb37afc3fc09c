"""What a session keeps on disk, so that a restart loses nothing saved: the folder's name, the list of its versions
(``versions.json``), version files that are never written over, and a marker while an update runs.

A session folder is named by a keyed hash of the session's id (``folder_name``): the same id finds its folder again
after a restart, two ids never share one, and no one can derive a folder's name from what a page shows.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Callable, Optional

from wilss.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from wilss.files import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "versions.json"
RUNNING = "update.running"
SECRET = ".session-key"
PREFIX = "s-"
NEW_VERSION = ".new-version."


def folder_name(workdir: Path, key: str) -> str:
    """``s-`` + 32 hex digits of HMAC-SHA256(the work folder's secret, ``key``): stable across restarts, unique per
    id, unguessable without the secret (kept in ``<workdir>/.session-key``, made on first use, readable by the
    server's user only)."""
    return PREFIX + _mac(workdir, key)[:32]


# A page keeps its session across reloads by a token the server gave it, stored in the browser (gr.BrowserState):
# 128 random bits and their HMAC, so the server knows the tokens it issued without keeping a list, and no client can
# make up one that names a session (nor derive a session's folder from a token without the secret).
TOKEN_KEY = "browser:"


def new_token(workdir: Path) -> str:
    """A fresh session token: 32 hex digits, '.', their 32-digit HMAC."""
    random = secrets.token_hex(16)
    return f"{random}.{_signature(workdir, random)}"


def token_session(workdir: Path, token: object) -> Optional[str]:
    """The session id a token issued by ``new_token`` names, or None for anything else (forged, altered, not text)."""
    if not isinstance(token, str) or len(token) != 65 or token[32] != ".":
        return None
    random, mac = token[:32], token[33:]
    if not all(c in "0123456789abcdef" for c in random):
        return None
    return TOKEN_KEY + random if hmac.compare_digest(mac, _signature(workdir, random)) else None


def _signature(workdir: Path, random: str) -> str:
    return _mac(workdir, "token-signature:" + random)[:32]   # not the folder's HMAC: a token does not name a folder


def state_secret(workdir: Path) -> str:
    """The key gr.BrowserState encrypts the token with in the browser's storage: stable across restarts (a random one
    per start would make a reloaded page unable to read its token after a restart), derived one way from the secret.
    The page itself knows it; the token's safety is its randomness and its HMAC, not this encryption."""
    return _mac(workdir, "browser-state")[:32]


def _mac(workdir: Path, text: str) -> str:
    path = Path(workdir) / SECRET
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:   # another process made it first
            pass
    secret = path.read_text().strip().encode()
    return hmac.new(secret, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def publish(folder: Path, first: int, write: Callable[[Path], object]) -> tuple[str, Path]:
    """Write a new version with ``write(tmp)`` and give it the first free name ``vNNN.pt`` from ``first`` on, never
    over an existing file (a hard link fails when the name is taken). Returns (name, path). A crash leaves at most a
    hidden temporary file, which ``read_manifest`` removes."""
    fd, tmp = tempfile.mkstemp(prefix=NEW_VERSION, suffix=".pt", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        number = first
        while True:
            name = f"v{number:03d}"
            dest = folder / f"{name}.pt"
            try:
                os.link(tmp, dest)
                return name, dest
            except FileExistsError:
                number += 1
            except OSError:   # no hard links on this file system: claim the name, then move the file onto it
                try:
                    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    number += 1
                    continue
                os.replace(tmp, dest)
                return name, dest
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(folder: Path, versions: list[dict], current: Optional[str]) -> None:
    """``versions.json``: each version's name, file, note, classes, parent and whether the app's setup made it."""
    text = json.dumps({"versions": versions, "current": current}, indent=1)
    atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(text))


def read_manifest(folder: Path) -> tuple[list[dict], Optional[str], list[Path]]:
    """(the recorded versions whose files exist, the current version's name, version files on disk that the record
    lacks: written just before a crash). Removes temporary files a crash left behind."""
    for pattern in (".*.pt", ".*.json", ".*.running"):   # hidden: publish's, save_checkpoint's, atomic_write's
        for leftover in folder.glob(pattern):
            leftover.unlink(missing_ok=True)
    try:
        data = json.loads((folder / MANIFEST).read_text())
        entries, current = list(data["versions"]), data.get("current")
        entries = [e for e in entries if isinstance(e, dict) and (folder / str(e.get("file", ""))).is_file()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        if (folder / MANIFEST).exists():
            log.warning("session %s: its version list is unreadable (%s); reading the version files", folder.name, err)
        entries, current = [], None
    listed = {e["file"] for e in entries}
    orphans = sorted(p for p in folder.glob("v[0-9][0-9][0-9]*.pt") if p.name not in listed)
    return entries, current, orphans


def disposable(folder: Path) -> bool:
    """Whether a session folder holds nothing a user made: every version recorded is one the app's setup made (a
    fresh page, or an anonymous API call). Folders without a record, or marked by a running update, never are."""
    if (folder / RUNNING).exists():   # its user will be told that the update was cut short
        return False
    try:
        data = json.loads((folder / MANIFEST).read_text())
        names = {p.name for p in folder.glob("v[0-9][0-9][0-9]*.pt")}
        return all(e.get("setup") for e in data["versions"]) and names <= {e.get("file") for e in data["versions"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def mark_running(folder: Path, what: str) -> None:
    atomic_write(folder / RUNNING, lambda tmp: tmp.write_text(what))


def clear_running(folder: Path) -> Optional[str]:
    """Remove the marker; returns what it said (None when there was none)."""
    try:
        text = (folder / RUNNING).read_text()
    except OSError:
        return None
    (folder / RUNNING).unlink(missing_ok=True)
    return text


class SharedVersions:
    """Version files read as checkpoints, one object per content and device: every session opens on a copy of the
    default model (and an updated one keeps its base), and without this each held its own copy in memory (12 MB with
    the ImageNet network, for each of the loaded sessions). A checkpoint read here is shared and must never be changed
    in place: updates, exports and evaluations copy the network (``copy.deepcopy``), predicts run it in eval mode on
    the device it was read for (so no request moves it while another runs it). Held weakly: a model no session holds
    any more is freed."""

    def __init__(self) -> None:
        self._held: weakref.WeakValueDictionary[tuple[str, str], Checkpoint] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def read(self, path: Path, device: str = "cpu") -> Checkpoint:
        """The checkpoint in ``path`` (``load_checkpoint``; raises ``CheckpointError``) with its network on
        ``device``: the one already held if a file of the same content was read before for that device."""
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        with open(path, "rb") as f:
            key = (hashlib.file_digest(f, "sha256").hexdigest(), str(device))
        with self._lock:
            held = self._held.get(key)
        if held is not None:
            return held
        ckpt = load_checkpoint(path)
        ckpt.model.to(device)
        with self._lock:   # two sessions may read the same content at once: the first one kept wins
            return self._held.setdefault(key, ckpt)


shared_versions = SharedVersions()
