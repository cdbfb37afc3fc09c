"""The page's event handlers for the model, data, predict, evaluate and versions tabs (updates and review:
``app.update_handlers``): each maps widget values onto one engine call (the same call ``python -m wilss`` makes)
and the result back onto widget values. Bad input ends in a message in the page and no state change.

No ``from __future__ import annotations`` here: gradio finds ``gr.Request`` parameters by their annotation.
"""
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from app import render
from app.evaluation import bring_eval_set
from app.intake import apply_table, bring_tagged, table_rows, tag_summary
from app.session import AppConfig, DeviceQueue, Session, SessionStore, base_file
from app.serving import compute, release_memory, release_when_quiet
from app.session_files import new_token, token_session
from app.views import (HISTORY_HEADERS, added_in, architecture_markdown, before_after_rows, data_summary,
                       history_rows, spare_colours, thumbnails)
from wilss.checkpoint import CheckpointError, load_checkpoint
from wilss.data import DataError, list_images, load_image
from wilss.conventions import prepare_image
from wilss.tags import read_tagged_folder
from wilss.demo import HELDOUT_FILE
from wilss.engine import resolve_device
from wilss.files import atomic_write
from wilss.export import ONNX_MISSING, onnx_available
from wilss.service import ExportError, Predictor, export_onnx, score
from wilss.recipes import DEMO_CLASS, DEMO_COLOUR, DEMO_UPDATE

log = logging.getLogger(__name__)

CLASS_ROWS = 3          # new classes one click can add
DATA_VIEW_COUNT = 6 + 2 * CLASS_ROWS   # status, counts, warnings, table, watch list, names, colours, thumbnails
USER_ERRORS = (DataError, CheckpointError, ExportError, KeyError)
LARGE_IMAGE = 3 * 2**20   # values (about 1 MP): a predict of a larger image hands its memory back when done


def error(text: str) -> str:
    return f"**Error:** {text}"


def ok(text: str) -> str:
    return f"**Done:** {text}"


def tidy(message: str, names: dict) -> str:
    """A message with server paths (uploads, staging folders) replaced by what the user knows them as."""
    for path, label in sorted(names.items(), key=lambda kv: -len(str(kv[0]))):   # longest first
        message = message.replace(f"'{path}'", label).replace(str(path), label)
    return message


def output_folder(s: Session, keep_s: float = 600.0) -> Path:
    """The session's folder for rendered outputs, emptied of files older than ``keep_s`` (gradio has copied them
    into its cache by then: it does so before the request answers)."""
    folder = s.subfolder("outputs")
    now = time.time()
    for old in folder.glob("*.png"):
        try:
            if now - old.stat().st_mtime > keep_s:
                old.unlink()
        except FileNotFoundError:   # another request of the session removed it first
            pass
    return folder


def png_file(image: np.ndarray, folder: Path) -> str:
    """``image`` (``HxWx3`` uint8) as a PNG under a name no other output uses, written atomically.

    Returned as a path rather than an array: gradio stores an array output in a cache file named by its content
    and writes it in place, so two identical outputs at once (two predicts of one image) wrote one file while it
    was being served, and a client read it half-written ("Too little data for declared Content-Length")."""
    return str(atomic_write(folder / f"{uuid.uuid4().hex}.png", lambda tmp: Image.fromarray(image).save(tmp)))


def link_or_copy(src: str, dest: str) -> None:
    """A hard link to ``src`` at ``dest``, or a copy where links are not possible (another file system)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _files(value) -> list[Path]:
    """gradio File values (a path, a list of paths, or None) as paths."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [Path(getattr(v, "name", v)) for v in items if v]


class Handlers:
    """One per app: sessions by browser tab, and the device queue they share."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.device = str(resolve_device(config.device))
        self.store = SessionStore(config, setup=self.setup_session)
        self.queue = DeviceQueue()
        self.max_bytes = config.max_upload_mb * 2**20 * 4   # unpacked size allowed for a zip

    # ---------------------------------------------------------------------------------------- sessions
    def setup_session(self, session: Session) -> None:
        """The embedded default: the configured checkpoint as v000 (unless the session's folder holds versions from
        before a restart), and the sample images."""
        if not session.versions:
            session.add_file(self.config.checkpoint, note=f"loaded {self.config.checkpoint.name}", setup=True)
        self.load_samples(session)

    def load_samples(self, s: Session) -> None:
        """Copy the configured samples into a fresh data folder of the session and read them."""
        s.data_message = ""
        samples = self.config.samples
        if samples is None or not samples.is_dir() or not list_images(samples):
            s.data_message = "No sample images are configured: upload tagged images."
            return
        dest = s.new_folder("data")
        # the held-out set is scored where it is (app.update_handlers.heldout_scores): not copied per session; the
        # images are linked where the file system allows (nothing writes over an image), not copied for every page
        shutil.copytree(samples, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(HELDOUT_FILE),
                        copy_function=link_or_copy)
        try:
            s.set_data(read_tagged_folder(dest), dest, f"samples ({samples.name}/)")
        except DataError as err:
            s.data_message = f"The sample images could not be read: {err}"

    def session(self, request: Optional[gr.Request]) -> Session:
        return self.store.get(self.store.key_of(getattr(request, "session_hash", None) or "local"))

    def attach(self, request: gr.Request, token) -> str:
        """The page's first call (its stored ``gr.BrowserState`` value in, the value to store out): a token the
        server issued (``session_files.new_token``) brings the page back to that token's session, so a reloaded page
        sees its versions; anything else (none yet, forged, altered) gets a new token and session."""
        workdir = self.config.workdir
        key = token_session(workdir, token)
        if key is None:
            token = new_token(workdir)
            key = token_session(workdir, token)
        self.store.attach(getattr(request, "session_hash", None) or "local", key)
        return token

    def close_session(self, request: gr.Request) -> None:
        self.store.close(getattr(request, "session_hash", None) or "local")

    # -------------------------------------------------------------------------------------- model views
    def no_background_box(self, request: gr.Request):
        """The advanced "no background class in the data" box, from the current model: ticked for one whose data
        has no background class (``Checkpoint.background``; the update's default, ``UpdateRequest.no_background``)."""
        return gr.Checkbox(value=not self.session(request).ckpt.background)

    def model_views(self, request: gr.Request):
        """Everything that shows the current model (outputs ``ui.MODEL_VIEWS``)."""
        s = self.session(request)
        ckpt, version = s.ckpt, s.current
        labels = [v.label for v in s.versions]
        parent = s.parent_of(version)
        header = (f"**Model:** {version.label} · classes: "
                  + ", ".join(ckpt.class_names[1:]) + f" · device: `{self.device}`")
        if s.notice:
            header = f"**Note:** {s.notice}\n\n{header}"
        return (header,
                render.classes_html(ckpt.class_names, ckpt.colours, added_in(ckpt.history)),
                architecture_markdown(ckpt, version=version.name, file_name=version.path.name),
                pd.DataFrame(history_rows(ckpt.history), columns=HISTORY_HEADERS),
                ckpt.history,
                gr.Dropdown(choices=labels, value=version.label),
                self._version_text(s, version.label),
                str(version.path),
                render.legend_html(ckpt.class_names, ckpt.colours, new=ckpt.last_added, title="Legend"),
                gr.Dropdown(choices=["(none)"] + labels, value=parent.label if parent else "(none)"),
                gr.Dropdown(choices=labels, value=version.label))

    def _version_text(self, s: Session, label: str) -> str:
        try:
            v = s.version(label)
        except KeyError:
            return ""
        marker = " (current)" if v is s.current else ""
        parent = f" · made from {v.parent}" if v.parent else ""
        classes = ", ".join(v.class_names[1:])
        return f"**{v.name}**{marker}: {v.note}{parent} · classes: {classes} · file `{v.path.name}`"

    def version_info(self, request: gr.Request, label: str) -> str:
        return self._version_text(self.session(request), label or "")

    def load_checkpoint(self, request: gr.Request, file) -> str:
        files = _files(file)
        if not files:
            return error("Choose a checkpoint file (.pt) first.")
        s = self.session(request)
        try:
            version = s.add_file(files[0], note=f"loaded {files[0].name}")
        except CheckpointError as err:   # the server's upload path means nothing to the user: show the file name
            return error(f"{tidy(str(err), {files[0]: repr(files[0].name)})}. The current model is unchanged.")
        return ok(f"loaded {files[0].name} as {version.name} ({len(version.class_names)} classes); it is now current.")

    def load_base(self, request: gr.Request, spec: str) -> str:
        """Make a pretrained torchvision base (``wilss.bases``) the next version."""
        s = self.session(request)
        try:
            version = s.add_file(base_file(spec or "", self.config.workdir / "bases"), note=f"loaded {spec}")
        except CheckpointError as err:
            return error(f"{err}. The current model is unchanged.")
        return ok(f"loaded {spec} as {version.name} ({len(version.class_names)} classes); it is now current.")

    def rollback(self, request: gr.Request, label: str) -> str:
        s = self.session(request)
        try:
            version = s.rollback(label or "")
        except USER_ERRORS as err:
            return error(str(err))
        return ok(f"{version.name} is the current model again (every other version is kept).")

    def checkpoint_file(self, request: gr.Request) -> str:
        return str(self.session(request).current.path)

    def export_onnx(self, request: gr.Request):
        s = self.session(request)
        version = s.current
        path = s.subfolder("exports") / f"{version.name}.onnx"
        if not onnx_available():
            return None, error(f"{ONNX_MISSING} and restart the app. The .pt checkpoint download works without it.")
        try:
            if not path.exists():
                export_onnx(s.ckpt, path, size=DEMO_UPDATE.crop_size)
        except ExportError as err:
            return None, error(str(err))
        return str(path), ok(f"exported {version.name} to {path.name} (input 1x3xHxW normalised image, dynamic H/W; "
                             "class names and colours in the metadata).")

    # --------------------------------------------------------------------------------------------- data
    def data_views(self, request: gr.Request, status: str = ""):
        """Outputs ``ui.DATA_VIEWS``: status, counts, warnings, tag table, watch choices, class rows."""
        s = self.session(request)
        known = s.ckpt.class_names[1:]
        if s.tagged is None:
            empty = pd.DataFrame(columns=["filename", "tags"])
            return ((status or s.data_message or "No images yet."),
                    pd.DataFrame(columns=["tag", "images", "role"]), "", empty,
                    gr.Dropdown(choices=[], value=[]), *([""] * CLASS_ROWS), *spare_colours(s.ckpt.colours, CLASS_ROWS),
                    [])
        rows, warnings = tag_summary(s.tagged, known)
        names = table_rows(s.tagged, s.data_root)
        new_tags = [t for t in s.tagged.class_names if t not in known][:CLASS_ROWS]
        spare = iter(spare_colours(s.ckpt.colours, CLASS_ROWS))
        colours = [DEMO_COLOUR if t == DEMO_CLASS else next(spare) for t in new_tags]
        colours += [next(spare) for _ in range(CLASS_ROWS - len(colours))]
        summary = data_summary(s.tagged, s.data_source)
        return ((status + "\n\n" + summary) if status else summary,
                pd.DataFrame(rows, columns=["tag", "images", "role"]),
                "\n".join(f"- **Warning:** {w}" for w in warnings),
                pd.DataFrame(names, columns=["filename", "tags"]),
                gr.Dropdown(choices=[n for n, _ in names], value=[]),
                *(new_tags + [""] * (CLASS_ROWS - len(new_tags))), *colours,
                thumbnails(s.tagged, [n for n, _ in names]))

    def bring_data(self, request: gr.Request, files, tags_file):
        s = self.session(request)
        dest = s.new_folder("data")
        tags = (_files(tags_file) or [None])[0]
        try:
            tagged, root = bring_tagged(_files(files), tags, dest, max_bytes=self.max_bytes)
        except Exception as err:   # the staging folder never stays behind, whatever went wrong
            shutil.rmtree(dest, ignore_errors=True)
            if not isinstance(err, DataError):   # a case the checks miss: the page gets a message, the log the rest
                log.exception("unexpected error while bringing in an upload")
                return (error("The upload could not be read (an unexpected error; it is in the server's log). The "
                              "image set is unchanged."),) + (gr.skip(),) * (DATA_VIEW_COUNT - 1)
            names = {p: f"'{p.name}'" for p in _files(files) + _files(tags_file)}
            if tags is not None:
                names.update({q: f"'{tags.name}'" for q in dest.rglob(f"uploaded_tags{tags.suffix.lower()}")})
                names.update({dest / f"uploaded_tags{tags.suffix.lower()}": f"'{tags.name}'"})
            names.update({q: "your upload" for q in [dest, *[d for d in dest.glob("*") if d.is_dir()]]})
            text = tidy(str(err), names)
            return (error(f"{text} The image set is unchanged."),) + (gr.skip(),) * (DATA_VIEW_COUNT - 1)
        s.set_data(tagged, root, f"your upload ({len(_files(files))} file(s))")
        return self.data_views(request, ok("images brought in."))

    def reset_data(self, request: gr.Request):
        s = self.session(request)
        self.load_samples(s)
        return self.data_views(request, ok("back to the built-in sample images.") if not s.data_message else "")

    def apply_table(self, request: gr.Request, table):
        s = self.session(request)
        if s.data_root is None:
            return (error("Upload images first."),) + (gr.skip(),) * (DATA_VIEW_COUNT - 1)
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else list(table or [])
        try:
            tagged = apply_table(rows, s.data_root)
        except DataError as err:
            return (error(f"{err} The tags are unchanged."),) + (gr.skip(),) * (DATA_VIEW_COUNT - 1)
        except Exception:   # a case the checks miss: a message here, the rest in the log
            log.exception("unexpected error while reading the tags table")
            return ((error("The tags table could not be read (an unexpected error; it is in the server's log). The "
                           "tags are unchanged."),) + (gr.skip(),) * (DATA_VIEW_COUNT - 1))
        s.set_data(tagged, s.data_root, s.data_source.split(" + ")[0] + " + tags edited in the page")
        return self.data_views(request, ok("tags updated from the table."))

    # ------------------------------------------------------------------------------------------ predict
    def predict(self, request: gr.Request, file, opacity):
        """(overlay, legend, score maps, status) for one image, computed on the app's compute thread."""
        return compute.call(self._predict, request, file, opacity)

    def _predict(self, request: gr.Request, file, opacity):
        files = _files(file)
        if not files:
            return None, gr.skip(), None, error("Drop an image first.")
        try:
            image = load_image(files[0])
        except DataError as err:
            return None, gr.skip(), None, error(tidy(str(err), {files[0]: f"'{files[0].name}'"}))
        large = image.size > LARGE_IMAGE
        if max(image.shape[:2]) > self.config.max_side:   # the page shows it no larger: predict at that size
            image = prepare_image(image, self.config.max_side)
        s = self.session(request)
        ckpt = s.ckpt
        start = time.perf_counter()
        pred = Predictor(ckpt, device=self.device, max_side=self.config.max_side).predict(image)
        took = time.perf_counter() - start
        k = ckpt.num_classes
        shares = np.bincount(pred.mask.ravel(), minlength=k)[:k] / pred.mask.size
        overlay = render.upscale(render.mask_overlay(image, pred.mask, ckpt.colours,
                                                    float(opacity if opacity is not None else 0.5)), 384)
        legend = render.legend_html(ckpt.class_names, ckpt.colours, shares=shares, new=ckpt.last_added,
                                    title=f"Legend ({s.current.name}; % of the image)")
        maps = [(render.upscale(render.cam_overlay(image, pred.scores[c])), f"{name}: max {pred.scores[c].max():.2f}")
                for c, name in enumerate(ckpt.class_names)]
        folder = output_folder(s)
        overlay, maps = png_file(overlay, folder), [(png_file(m, folder), caption) for m, caption in maps]
        found = ", ".join(f"{ckpt.class_names[c]} {100 * shares[c]:.1f}%" for c in np.argsort(-shares) if shares[c] > 0)
        if large:   # its decoded pixels and maps are freed: hand the memory back (app.serving)
            release_memory()
        else:   # many small ones: once they pause
            release_when_quiet()
        return (overlay, legend, maps,
                f"{files[0].name}: {found} (model {s.current.name}, {1000 * took:.0f} ms on {self.device})")

    def predict_current(self, request: gr.Request, file, opacity):
        """``predict`` by the current version after the model changed (rollback, load, update), or cleared
        outputs when no image is dropped, so the tab never shows another version's maps."""
        if not _files(file):
            return None, gr.skip(), None, ""
        return self.predict(request, file, opacity)

    # ----------------------------------------------------------------------------------------- evaluate
    def evaluate(self, request: gr.Request, image_files, mask_files, before_label, after_label):
        """(before/after table, status), scored on the app's compute thread."""
        return compute.call(self._evaluate, request, image_files, mask_files, before_label, after_label)

    def _evaluate(self, request: gr.Request, image_files, mask_files, before_label, after_label):
        s = self.session(request)
        dest = s.new_folder("eval")
        try:
            after_v = s.version(after_label or s.current.label)
            before_v = None if not before_label or before_label == "(none)" else s.version(before_label)
            after = load_checkpoint(after_v.path)
            before = load_checkpoint(before_v.path) if before_v else None
            eval_set = bring_eval_set(_files(image_files), _files(mask_files), dest, max_bytes=self.max_bytes,
                                      num_classes=after.num_classes)
            new, limit = after.last_added, self.config.max_side   # images larger than the limit: one at a time
            res_after = score(after, eval_set, device=self.device, max_side=limit).as_dict()
            res_before = (score(before, eval_set, after.class_names, new, device=self.device,
                                max_side=limit).as_dict() if before else None)
        except Exception as err:   # the staging folder never stays behind, whatever went wrong
            shutil.rmtree(dest, ignore_errors=True)
            if not isinstance(err, USER_ERRORS):   # a case the checks miss: a message here, the rest in the log
                log.exception("unexpected error while scoring an upload")
                return gr.skip(), error("The upload could not be scored (an unexpected error; it is in the server's "
                                        "log). Nothing was changed.")
            names = {p: f"'{p.name}'" for p in _files(image_files) + _files(mask_files)}
            names.update({dest / "images": "the uploaded images", dest / "masks": "the uploaded masks",
                          dest: "the upload"})
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)   # KeyError quotes itself
            return gr.skip(), error(tidy(text, names))
        release_memory()   # two models and a set of images were in use
        rows = before_after_rows(after.class_names, new, res_before, res_after)
        columns = ["metric (%)", before_v.name if before_v else "before", after_v.name]
        return (pd.DataFrame(rows, columns=columns),
                ok(f"scored on {len(eval_set.pairs)} images; 'new' = {', '.join(new) or 'none (a base model)'}."))
