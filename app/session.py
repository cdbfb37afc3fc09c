"""The app's state: one ``Session`` per browser tab (its versions of the model, its tagged images, its running
update), all under the app's work folder, and one ``DeviceQueue`` per device so updates run one at a time.

Layout of the work folder (``--workdir``, default ``runs/app``)::

    <workdir>/cache/                 gradio's uploads and rendered outputs (GRADIO_TEMP_DIR)
    <workdir>/bases/                 pretrained bases (torchvision:NAME) saved as checkpoints, once
    <workdir>/s-<hash>/              one session (the name: ``app.session_files.folder_name``)
    <workdir>/s-<hash>/v000.pt ...   every version of the model, never overwritten
    <workdir>/s-<hash>/versions.json the list of versions (how each was made), read back after a restart
    <workdir>/s-<hash>/data-NNN/     tagged images brought in (copied / extracted here)
    <workdir>/s-<hash>/eval-NNN/     evaluation sets brought in
    <workdir>/s-<hash>/exports/      ONNX exports
    <workdir>/s-<hash>/outputs/      predict pictures handed to gradio (pruned)
"""
from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from app.serving import release_memory
from app.session_files import (PREFIX, clear_running, disposable, folder_name, mark_running, publish, read_manifest,
                               shared_versions, write_manifest)
from wilss.bases import pretrained_base
from wilss.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from wilss.engine import resolve_device
from wilss.tags import TaggedSet
from wilss.inference import DEFAULT_MAX_SIDE

log = logging.getLogger(__name__)


def open_checkpoint(path: Path, device: str = "cpu") -> Checkpoint:
    """``load_checkpoint`` (through ``shared_versions``: one object per content), first refusing files that are not
    PyTorch zip archives (``torch.save`` writes every wilss checkpoint as one): the engine would call such a file
    'pickled objects', which misleads for a text or an image file."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a wilss checkpoint (not a PyTorch archive)")
    return shared_versions.read(path, device)


def base_file(spec: str, folder: Path) -> Path:
    """The pretrained base ``spec`` ('torchvision:NAME', see ``wilss.bases``) as a checkpoint file in ``folder``,
    written on first use and reused by every session after it. Raises ``CheckpointError``."""
    path = Path(folder) / f"{spec.replace(':', '-')}.pt"
    if not path.is_file():
        # two sessions may race here: the write is atomic and both write the same content
        save_checkpoint(pretrained_base(spec), path, overwrite=True)
    return path


@dataclass(frozen=True)
class AppConfig:
    """What ``launch.py`` decides for every session."""

    workdir: Path
    checkpoint: Path                      # the embedded default model
    samples: Optional[Path] = None        # the embedded default tagged images
    device: str = "auto"
    max_upload_mb: int = 200
    max_side: int = DEFAULT_MAX_SIDE      # images larger are predicted and scored at this size (wilss.inference)
    live_images: int = 4                  # images shown in the live gallery
    live_every_s: float = 2.0             # gallery refresh period during an update
    plot_every_s: float = 1.0             # loss-curve refresh period


@dataclass
class Version:
    """One saved state of the model: ``path`` is a checkpoint file in the session folder."""

    name: str                 # 'v000', 'v001', ...
    path: Path
    note: str                 # what made it ('loaded default_base.pt', 'added arrow from 64 images', ...)
    class_names: list[str]
    parent: Optional[str] = None
    setup: bool = False       # made by the app's setup of a new session (the default model), not by its user

    @property
    def label(self) -> str:
        return f"{self.name} · {self.note} ({len(self.class_names)} classes)"

    def record(self) -> dict:
        return {"name": self.name, "file": self.path.name, "note": self.note, "class_names": list(self.class_names),
                "parent": self.parent, "setup": self.setup}


class Session:
    """A user's workspace. Versions are append-only: a rollback makes an earlier version current again.

    Its versions outlive the process: they are listed in ``versions.json`` and read back when the session's folder
    is opened again (after a restart), with a notice when an update was cut short by it."""

    def __init__(self, config: AppConfig, folder: Path) -> None:
        self.config = config
        self.device = str(resolve_device(config.device))   # where its models are read to (``shared_versions``)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.versions: list[Version] = []
        self.current: Optional[Version] = None
        self._ckpt: Optional[Checkpoint] = None       # loaded current version
        self.tagged: Optional[TaggedSet] = None
        self.data_root: Optional[Path] = None         # folder the tagged paths live under
        self.data_source = ""
        self.data_message = ""                        # why there is no data, when there is none
        self._job = None                              # app.update.UpdateJob while one runs or after it ran
        self.last_update = None                       # the finished UpdateJob, kept for the Review tab
        self.step_masks: list[Path] = []              # uploaded pixel masks of the tagged images (a MiB step)
        self.review_view = None                       # (image names, indices, tiles per image) of the shown page
        self.notice = ""                              # told in the page until the next version (a restart)
        self._counter = itertools.count()
        self._restore()

    # ------------------------------------------------------------------------------------- on disk
    def _restore(self) -> None:
        """Read back the versions a previous process saved here, and whether it died during an update."""
        entries, current, orphans = read_manifest(self.folder)
        for e in entries:
            self.versions.append(Version(str(e["name"]), self.folder / e["file"], str(e.get("note", "")),
                                         [str(c) for c in e.get("class_names", [])], e.get("parent"),
                                         bool(e.get("setup"))))
        for path in orphans:   # written, then the process died before listing it
            try:
                ckpt = open_checkpoint(path)
            except CheckpointError as err:
                log.warning("session %s: %s is not a loadable version (%s); left as it is", self.folder.name,
                            path.name, err)
                continue
            self.versions.append(Version(path.stem, path, "found after a restart", list(ckpt.class_names)))
        if self.versions:
            self.current = next((v for v in self.versions if v.name == current), self.versions[-1])
            if orphans:
                self._save_record()
        interrupted = clear_running(self.folder)
        if interrupted is not None:
            self.notice = (f"the server restarted while an update was running here ({interrupted}); that update was "
                           "lost and left no partial version. Your saved versions are listed as before.")

    def _save_record(self) -> None:
        write_manifest(self.folder, [v.record() for v in self.versions], self.current.name if self.current else None)

    @property
    def job(self):
        return self._job

    @job.setter
    def job(self, job) -> None:
        """A new update marks the folder until it ends, so a restart can tell the user it was cut short."""
        self._job = job
        if job is not None:
            names = ", ".join(getattr(getattr(job, "plan", None), "new_names", []) or [])
            mark_running(self.folder, f"adding {names}" if names else "an update")

    def settle(self) -> None:
        """Clear the running-update mark once the update ended (done, cancelled or failed)."""
        if self._job is not None and not getattr(self._job, "running", False):
            clear_running(self.folder)

    @property
    def disposable(self) -> bool:
        """Nothing in it was made by its user: only the app's setup made versions (see ``SessionStore``)."""
        return all(v.setup for v in self.versions) and not (self._job is not None and self._job.running)

    # ----------------------------------------------------------------------------------------- versions
    @property
    def ckpt(self) -> Checkpoint:
        with self.lock:
            if self.current is None:
                raise CheckpointError("no model is loaded")
            if self._ckpt is None:
                self._ckpt = shared_versions.read(self.current.path, self.device)
            return self._ckpt

    def unload(self) -> bool:
        """Forget the loaded model (``ckpt`` reads it from its file again when next asked for) and the training state
        its last update kept for the Review tab (that update can still be re-run). Returns whether anything was held."""
        with self.lock:
            held = self._ckpt is not None or getattr(self.last_update, "update", None) is not None
            self._ckpt = None
            if self.last_update is not None:
                self.last_update.release(review=False)
            return held

    def version(self, name: str) -> Version:
        for v in self.versions:
            if v.name == name or v.label == name:
                return v
        raise KeyError(f"there is no version {name!r}")

    def add_file(self, path: Path, note: str, *, setup: bool = False) -> Version:
        """Check ``path`` is one of our checkpoints (``CheckpointError`` otherwise, nothing changes), copy it in as
        the next version and make it current."""
        ckpt = open_checkpoint(path, self.device)   # refuses foreign or pickled files before anything is written
        with self.lock:
            name, dest = publish(self.folder, len(self.versions), lambda tmp: shutil.copyfile(path, tmp))
            return self._append(Version(name, dest, note, list(ckpt.class_names),
                                        self.current.name if self.current else None, setup), ckpt)

    def add_checkpoint(self, ckpt: Checkpoint, note: str, parent: Optional[str]) -> Version:
        """Save ``ckpt`` as the next version and make it current."""
        with self.lock:
            name, dest = publish(self.folder, len(self.versions),
                                 lambda tmp: save_checkpoint(ckpt, tmp, overwrite=True))
            clear_running(self.folder)   # the update's result is saved: a restart from here on loses nothing
            return self._append(Version(name, dest, note, list(ckpt.class_names), parent), ckpt)

    def _append(self, version: Version, ckpt: Checkpoint) -> Version:
        self.versions.append(version)
        self.current, self._ckpt, self.notice = version, ckpt, ""
        self._save_record()
        log.info("session %s: %s", self.folder.name, version.label)
        return version

    def rollback(self, name: str) -> Version:
        """Make an earlier (or any) version current; nothing is deleted."""
        with self.lock:
            version = self.version(name)
            ckpt = shared_versions.read(version.path, self.device)
            self.current, self._ckpt, self.notice = version, ckpt, ""
            self._save_record()
            return version

    def parent_of(self, version: Version) -> Optional[Version]:
        try:
            return self.version(version.parent) if version.parent else None
        except KeyError:
            return None

    # ------------------------------------------------------------------------------------------ folders
    def new_folder(self, kind: str) -> Path:
        """A fresh sub-folder of the session (``data-003``, ``eval-001``, ...)."""
        while True:
            path = self.folder / f"{kind}-{next(self._counter):03d}"
            if not path.exists():
                path.mkdir(parents=True)
                return path

    def subfolder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def set_data(self, tagged: TaggedSet, root: Path, source: str) -> None:
        with self.lock:
            self.tagged, self.data_root, self.data_source = tagged, root, source

    def relative_name(self, path: Path) -> str:
        """A training image's name as the user knows it (relative to the data folder)."""
        try:
            return Path(path).relative_to(self.data_root).as_posix() if self.data_root else Path(path).name
        except ValueError:
            return Path(path).name


class SessionStore:
    """Sessions by gradio session hash, created on first use (or read back from their folder after a restart),
    dropped when the page is closed.

    A session's folder is named by a keyed hash of its id (``session_files.folder_name``): one folder per id, found
    again after a restart, not guessable by another client. Folders holding nothing a user made (a page opened and
    closed, an anonymous API call: the default model and the samples, ~4 MB) are removed when their session is
    dropped or makes room, and at start; so at most ``capacity`` of them exist. Anything a user made stays."""

    def __init__(self, config: AppConfig, *, setup=None, capacity: int = 64, loaded: int = 8) -> None:
        self.config = config
        self.setup = setup          # callable(Session) filling a new session with the defaults
        self.capacity = capacity
        self.loaded = loaded        # sessions whose current model stays in memory (the most recently used)
        self._sessions: dict[str, Session] = {}
        self._pages: dict[str, str] = {}   # page (gradio session hash) -> the session id it shows, where attached
        self._lock = threading.Lock()
        self._sweep()

    def attach(self, page: str, key: str) -> None:
        """Page ``page`` shows session ``key`` from now on (a reloaded page, by its stored token)."""
        with self._lock:
            self._pages[page] = key

    def key_of(self, page: str) -> str:
        """The session id a page shows: the one attached to it, else its own."""
        return self._pages.get(page, page)

    def close(self, page: str) -> None:
        """Page ``page`` went away: its session is dropped (``drop``) unless another page still shows it (a second
        tab with the same stored token, or the reloaded page when the old one's close comes late)."""
        with self._lock:
            key = self._pages.pop(page, page)
            if key in self._pages.values():
                return
        self.drop(key)

    def get(self, key: str) -> Session:
        with self._lock:
            session = self._sessions.pop(key, None)
            if session is not None:
                self._sessions[key] = session   # the most recently used last
                session.settle()
                self._unload_idle()
                return session
            if len(self._sessions) >= self.capacity:   # the least recently used idle session makes room
                idle = [k for k, s in self._sessions.items() if not (s.job and s.job.running)]
                if idle:
                    self._discard(self._sessions.pop(idle[0]))
            session = Session(self.config, self.config.workdir / folder_name(self.config.workdir, key))
            self._sessions[key] = session
            if self.setup is not None:
                self.setup(session)
            self._unload_idle()
            return session

    def _unload_idle(self) -> None:
        """Only the ``loaded`` most recently used sessions keep their current model, and their last update's training
        state for the Review tab, in memory (a session reloads its model from its file when next used): 64 sessions
        each holding its own copies of the model grew the app's memory with every client. What they let go is handed
        back to the system (``release_memory``): a model read again on each use otherwise leaves its freed copy in
        the heap (``research.memory_probe``: 35 MB after 30 predicts by 10 sessions, the tiny model)."""
        unloaded = [s.unload() for s in list(self._sessions.values())[:-self.loaded] if not (s.job and s.job.running)]
        if any(unloaded):
            release_memory()

    def drop(self, key: str) -> None:
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and not (session.job and session.job.running):
                self._discard(self._sessions.pop(key))

    def _discard(self, session: Session) -> None:
        if session.disposable:
            shutil.rmtree(session.folder, ignore_errors=True)

    def _sweep(self) -> None:
        """At start: remove the folders of sessions that held nothing a user made."""
        workdir = Path(self.config.workdir)
        for folder in workdir.glob(f"{PREFIX}*") if workdir.is_dir() else []:
            if folder.is_dir() and disposable(folder):
                shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------ device queue
@dataclass(eq=False)  # identity: two tickets are never the same place in line
class Ticket:
    device: str
    created: float = field(default_factory=time.monotonic)


class DeviceQueue:
    """First come, first served, one holder at a time per device (updates saturate a device; two would each run
    at half speed and double the memory). ``position`` 0 means 'your turn'."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lines: dict[str, list[Ticket]] = {}

    def join(self, device: str) -> Ticket:
        ticket = Ticket(device)
        with self._cond:
            self._lines.setdefault(device, []).append(ticket)
        return ticket

    def position(self, ticket: Ticket) -> int:
        with self._cond:
            line = self._lines.get(ticket.device, [])
            return line.index(ticket) if ticket in line else -1

    def wait(self, ticket: Ticket, timeout: float) -> int:
        """Wait up to ``timeout`` s for the ticket's turn; returns its position then (0: go)."""
        with self._cond:
            self._cond.wait_for(lambda: self._position(ticket) <= 0, timeout=timeout)
            return self._position(ticket)

    def _position(self, ticket: Ticket) -> int:
        line = self._lines.get(ticket.device, [])
        return line.index(ticket) if ticket in line else -1

    def leave(self, ticket: Ticket) -> None:
        with self._cond:
            line = self._lines.get(ticket.device, [])
            if ticket in line:
                line.remove(ticket)
            self._cond.notify_all()

    def busy(self, device: str) -> int:
        """How many updates hold or wait for ``device``."""
        with self._cond:
            return len(self._lines.get(device, []))
