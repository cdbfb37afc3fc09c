"""The page's handlers for updates: start one (queued per device, streamed live), cancel it, review its
pseudo-labels page by page (also while it trains), and re-run it without the rejected images.

No ``from __future__ import annotations`` here: gradio finds ``gr.Request`` parameters by their annotation.
"""
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import gradio as gr
import pandas as pd
from gradio.utils import get_upload_folder

from app import render
from app.frames import FrameStore
from app.serving import compute, release_memory
from app.views import before_after_rows
from app.handlers import CLASS_ROWS, Handlers, _files, error, ok
from app.intake import bring_step_masks, table_rows
from app.session import Session
from app.update import (ADVANCED, TAGS_NETWORKS, TagsBaseJob, UpdateJob, make_config, plan_tags_base,
                        plan_update, watch_indices)
from wilss.conventions import rgb_to_hex
from wilss.checkpoint import load_checkpoint
from wilss.data import DataError
from wilss.tags import TaggedSet
from wilss.demo import HELDOUT_FILE, read_heldout
from wilss.methods import WILSON, check_method
from wilss.pseudo_labels import export_pseudo_labels
from wilss.scoring import EvalSet
from wilss.service import score

REVIEW_PAGE = 6         # training images per review page


class UpdateHandlers:
    """Shares the sessions, the device queue and the config of ``Handlers``."""

    def __init__(self, base: Handlers) -> None:
        self.base, self.config, self.queue, self.device = base, base.config, base.queue, base.device
        self._frames: dict[tuple[str, str], FrameStore] = {}

    def frames(self, s: Session, kind: str) -> FrameStore:
        """The rendered pictures of a session's ``kind`` gallery ('live', 'review'), in gradio's cache folder so
        they are served as they are; only the last few frames stay on disk."""
        key = (s.folder.name, kind)
        if key not in self._frames:
            self._frames[key] = FrameStore(Path(get_upload_folder()) / "frames" / s.folder.name / kind)
        return self._frames[key]

    def session(self, request: Optional[gr.Request]) -> Session:
        return self.base.session(request)

    # ------------------------------------------------------------------------------------------- update
    def add_classes(self, request: gr.Request, *values) -> Iterator[tuple]:
        """Streams (progress, status, loss plot, live gallery) while one add-class update runs. ``values``: the
        class names, their colours, the watched images, the advanced values (``ADVANCED``' order), the method
        (``METHOD_CHOICES``; default WILSON); masks uploaded with ``set_step_masks`` make it a MiB step."""
        s = self.session(request)
        names, colours = values[:CLASS_ROWS], values[CLASS_ROWS:2 * CLASS_ROWS]
        end = 2 * CLASS_ROWS + 1 + len(ADVANCED)
        watch, advanced = values[2 * CLASS_ROWS], values[2 * CLASS_ROWS + 1:end]
        method = (values[end] if len(values) > end else None) or WILSON
        specs = [(n, c) for n, c in zip(names, colours) if (n or "").strip()] or [("", colours[0])]
        try:
            given = dict(zip([a[0] for a in ADVANCED], advanced))   # the no-background box: from the version loaded
            plan = self._plan(s, specs, make_config(given), method, given.get("no_background"))
        except DataError as err:
            yield render.message_html("Nothing was started.", "error"), error(str(err)), gr.skip(), gr.skip()
            return
        names_all = table_rows(plan.tagged, s.data_root)
        image_names = [n for n, _ in names_all]
        live = [image_names.index(w) for w in (watch or []) if w in image_names][: self.config.live_images]
        live = live or watch_indices(plan.tagged, plan.new_names, self.config.live_images)
        yield from self._run(s, plan, image_names, live)

    def _plan(self, s: Session, specs, cfg, method: str, no_background: Optional[bool] = None):
        """The checked plan; with uploaded masks, those staged in a fresh session folder and read as ``add-class
        --masks`` reads them (the folder is removed again when they are refused). ``no_background``: the page's
        choice (None: the base's default, ``UpdateRequest.no_background``)."""
        if not s.step_masks or s.tagged is None or not specs[0][0].strip():
            return plan_update(s.current.name, s.ckpt, s.tagged, specs, cfg, source=s.data_source, method=method,
                               no_background=no_background)
        check_method(method, masks=s.step_masks, cfg=cfg)   # the offline pipeline with masks: refused first
        dest = s.new_folder("step-masks")
        try:
            old = list(s.ckpt.class_names)
            tagged, masks = bring_step_masks(s.step_masks, dest, s.tagged, s.data_root, max_bytes=self.base.max_bytes,
                                             class_names=old + [n.strip() for n, _ in specs], num_old=len(old))
            return plan_update(s.current.name, s.ckpt, tagged, specs, cfg, source=s.data_source, method=method,
                               masks=masks, no_background=no_background)
        except DataError:
            shutil.rmtree(dest, ignore_errors=True)
            raise

    def set_step_masks(self, request: gr.Request, files) -> str:
        """Keeps the uploaded pixel masks of the tagged images (none: the update learns from the tags); they are
        read and checked when the update starts, against its new classes."""
        s = self.session(request)
        s.step_masks = _files(files)
        if not s.step_masks:
            return "No masks: the update learns from the tags."
        return (f"{len(s.step_masks)} mask file(s) kept: the update will train MiB on them (checked when it "
                "starts; one per image, of its size, ids of the updated model).")

    def _run(self, s: Session, plan, image_names, live) -> Iterator[tuple]:
        what = ", ".join(plan.new_names)
        start_text = (f"Adding **{what}** to {plan.request.base_name} from {len(plan.tagged)} images "
                      f"({plan.tagged.num_negatives} negatives) on `{self.device}`: {plan.cfg.epochs} epochs, "
                      f"{plan.cfg.warmup_epochs} of localizer warm-up." + (f" Note: {plan.note}" if plan.note else ""))
        if plan.method != WILSON:   # MiB on masks or the offline pipeline: no CAMs to watch or review
            start_text = f"Method {plan.method}: {plan.describe()}, on `{self.device}`."
            live = []
        # the base's file: the finished job lets its base go while the session is idle, and reads it again
        base_file = next((v.path for v in s.versions if v.name == plan.request.base_name), None)
        job = UpdateJob(plan, device=self.device, live=live, live_every_s=self.config.live_every_s, names=image_names,
                        base_file=base_file)
        yield from self._stream(s, job, start_text, self._finish)

    def _stream(self, s: Session, job: UpdateJob, start_text: str, finish) -> Iterator[tuple]:
        """(progress, status, loss plot, live gallery) while ``job`` waits for the device and runs; ``finish(s, job)``
        gives the last of them."""
        if s.job is not None and s.job.running:
            yield (gr.skip(), error("An update is already running in this tab: wait for it to finish, or cancel it."),
                   gr.skip(), gr.skip())
            return
        plan = job.plan
        s.job = job
        ticket = self.queue.join(self.device)
        ticks = None
        try:
            while True:
                place = self.queue.wait(ticket, 1.0)
                if job.cancelled:
                    job.abandon()
                    yield render.message_html("Cancelled while waiting: nothing changed.", "cancelled"), \
                        ok("cancelled before it started; the model is unchanged."), gr.skip(), gr.skip()
                    return
                if place <= 0:
                    break
                yield (render.message_html(f"Waiting for the device ({self.device}): {place} update(s) ahead of "
                                           f"yours; you are number {place + 1} in line.", "wait"),
                       start_text, gr.skip(), gr.skip())
            ticks = job.run()
            plotted = 0.0
            for tick in compute.iterate(ticks):   # each iteration on the app's compute thread (app.serving)
                p = tick.progress
                bar = (render.progress_html(p.iteration, p.total_iterations, phase=p.phase, epoch=p.epoch,
                                            epochs=plan.cfg.epochs, eta_s=p.eta_s, losses=p.losses)
                       if p else render.message_html("Preparing the update...", "wait"))
                plot = gr.skip()
                final = p is not None and p.iteration == p.total_iterations
                if p is not None and (final or time.monotonic() - plotted >= self.config.plot_every_s):
                    plot, plotted = self.loss_frame(job), time.monotonic()
                gallery = self.live_gallery(s, job, tick.snapshots) if tick.snapshots else gr.skip()
                yield bar, start_text, plot, gallery
            yield finish(s, job)
        finally:
            if ticks is not None:
                compute.call(ticks.close)
            if job.state == "waiting":
                job.abandon()
            self.queue.leave(ticket)
            release_memory()   # the update's batches, copies and pictures are freed: hand the memory back

    def _finish(self, s: Session, job: UpdateJob) -> tuple:
        plan = job.plan
        done_iters = job.last.iteration if job.last else 0
        if job.state == "done":
            rejected = f" ({len(plan.request.rejected)} rejected)" if plan.request.rejected else ""
            version = s.add_checkpoint(job.result(), f"added {', '.join(plan.new_names)} from {len(plan.tagged)} "
                                       f"images{rejected}", parent=plan.request.base_name)
            s.last_update, job.saved_as = job, version.name
            job.release()   # what Review does not read goes (an update without Review pages keeps nothing)
            return (render.message_html(f"Finished in {render.format_duration(job.train_seconds)}: saved as "
                                        f"{version.name}.", "done"),
                    ok(f"added {', '.join(plan.new_names)}; the model is now **{version.name}** "
                       f"({len(version.class_names)} classes). Review the pseudo-labels in 'Review', try it in "
                       "'Predict', download it in 'Versions & export'."),
                    self.loss_frame(job), gr.skip())
        if job.state == "cancelled":
            return (render.message_html(f"Cancelled after {done_iters} iteration(s): nothing changed.", "cancelled"),
                    ok(f"cancelled; the model is still {s.current.name}, as it was."), gr.skip(), gr.skip())
        return (render.message_html("The update failed: nothing changed.", "error"),
                error(f"the update failed ({job.error}); the model is unchanged."), gr.skip(), gr.skip())

    # ----------------------------------------------------------------------------- a base from tags alone
    def start_from_tags(self, request: gr.Request, arch, epochs, batch_size, crop_size) -> Iterator[tuple]:
        """A new model learnt from the Data tab's images and tags alone (``wilss.service.run_tags_base``), streamed
        like an update (same live gallery, same cancel) and saved as the next version. Outputs: tabs + the four
        update outputs + the Model tab's status."""
        s = self.session(request)
        try:
            plan = plan_tags_base(s.tagged, arch=arch or TAGS_NETWORKS[0], source=s.data_source,
                                  values={"epochs": epochs, "batch_size": batch_size, "crop_size": crop_size})
        except DataError as err:
            text = error(f"{err} Nothing was started; the model is unchanged.")
            yield gr.skip(), gr.skip(), text, gr.skip(), gr.skip(), text
            return
        names = [n for n, _ in table_rows(plan.tagged, s.data_root)]
        live = watch_indices(plan.tagged, plan.new_names, self.config.live_images)
        job = TagsBaseJob(plan, device=self.device, live=live, live_every_s=self.config.live_every_s, names=names)
        text = (f"Starting from tags alone: {plan.describe()}, on `{self.device}`."
                + (f" Note: {plan.note}" if plan.note else ""))
        yield gr.Tabs(selected="add"), gr.skip(), gr.skip(), gr.skip(), gr.skip(), "Training a model from the tags: " \
            "follow it in 'Add classes'."
        last = None
        for last in self._stream(s, job, text, self._finish_tags):
            yield (gr.skip(), *last, gr.skip())
        yield (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), last[1] if last else gr.skip())

    def _finish_tags(self, s: Session, job: TagsBaseJob) -> tuple:
        plan = job.plan
        if job.state == "done":
            version = s.add_checkpoint(job.result(), f"started from tags alone: {', '.join(plan.new_names)} from "
                                       f"{len(plan.tagged)} images", parent=None)
            job.saved_as = version.name
            job.release()   # the model is saved and no Review page shows it: free the training
            return (render.message_html(f"Finished in {render.format_duration(job.train_seconds)}: saved as "
                                        f"{version.name}.", "done"),
                    ok(f"a model of {', '.join(plan.new_names)} learnt from the tags alone is now **{version.name}** "
                       f"({len(version.class_names)} classes). Try it in 'Predict', grow it in 'Add classes', "
                       "download it in 'Versions & export'."),
                    self.loss_frame(job), gr.skip())
        if job.state == "cancelled":
            done = job.last.iteration if job.last else 0
            return (render.message_html(f"Cancelled after {done} iteration(s): nothing changed.", "cancelled"),
                    ok(f"cancelled; the model is still {s.current.name}, as it was."), gr.skip(), gr.skip())
        return (render.message_html("Training from the tags failed: nothing changed.", "error"),
                error(f"training from the tags failed ({job.error}); the model is unchanged."), gr.skip(), gr.skip())

    def cancel(self, request: gr.Request) -> str:
        job = self.session(request).job
        if job is None or not job.running:
            return "No update is running."
        job.cancel()
        return "Cancelling: the update stops before its next iteration and the model stays as it was."

    def heldout_scores(self, request: gr.Request):
        """(info, table) after an update: mIoU old / new / all and each class's IoU, before and after, on the held-out
        images with masks that ship with the samples (``<samples>/heldout.zip``), when their classes are the
        update's. Nothing is shown for an update that did not finish."""
        s = self.session(request)
        job = s.last_update
        if job is None or s.job is not job or job.saved_as is None:
            return gr.skip(), gr.skip()
        if job.heldout is None:
            job.heldout = self._score_heldout(s, job)
        info, rows, columns = job.heldout
        if not rows:
            return info, gr.Dataframe(visible=False)
        return info, gr.Dataframe(value=pd.DataFrame(rows, columns=columns), visible=True)

    def _score_heldout(self, s: Session, job: UpdateJob) -> tuple:
        path = self.config.samples / HELDOUT_FILE if self.config.samples else None
        if path is None or not path.is_file():
            return "", [], []
        plan = job.plan
        try:
            names, pairs = read_heldout(path)
            if names != plan.class_names:
                return (f"The held-out images of the samples have masks for {', '.join(names[1:])}, not for this "
                        "model's classes: score it on your own images with masks in 'Evaluate'.", [], [])
            after = load_checkpoint(s.version(job.saved_as).path)
            heldout = EvalSet(pairs, None, path.name, same_size=True)
            res_after = score(after, heldout, names, plan.new_names, device=self.device).as_dict()
            res_before = score(plan.base, heldout, names, plan.new_names, device=self.device).as_dict()
        except (DataError, KeyError) as err:
            return error(f"could not score the held-out images: {err}"), [], []
        new = ", ".join(plan.new_names)
        info = (f"**Quality on {len(pairs)} held-out images** (`{path.name}`: never trained on, with masks): "
                f"{new} IoU {res_after['iou'][plan.new_names[0]]:.1f} %, old classes' mIoU "
                f"{res_after['summary']['old']:.1f} % (before: {res_before['summary']['old']:.1f} %).")
        columns = ["metric (%)", f"before ({plan.request.base_name})", f"after ({job.saved_as})"]
        return info, before_after_rows(names, plan.new_names, res_before, res_after), columns

    def cancel_button(self, request: gr.Request) -> gr.Button:
        """Cancel is clickable only while this tab's update runs (or waits for the device)."""
        job = self.session(request).job
        return gr.Button(interactive=bool(job is not None and job.running))

    def loss_frame(self, job: UpdateJob) -> pd.DataFrame:
        return pd.DataFrame(render.loss_rows(job.losses, series=job.loss_series()))

    def live_gallery(self, s: Session, job: UpdateJob, snapshots) -> gr.Gallery:
        plan = job.plan
        tiles = []
        for snap in snapshots:
            index = job.live[snap.index]
            tiles += render.snapshot_tiles(snap.image, snap.cams, snap.pseudo_label, snap.prediction, plan.colours,
                                           plan.new_names, title=job.names[index])
        return gr.Gallery(value=self.frames(s, "live").write(tiles), columns=2 * (3 + len(plan.new_names)))

    # ------------------------------------------------------------------------------------------- review
    def _review_job(self, s: Session) -> Optional[UpdateJob]:
        if s.job is not None and s.job.reviewable and s.job.state == "running" and s.job.update is not None:
            return s.job
        job = s.last_update
        return job if job is not None and job.reviewable else None

    def review_page(self, request: gr.Request, page, rejected):
        """(gallery, info, page, rejected-dropdown) for one page of training images."""
        s = self.session(request)
        job = self._review_job(s)
        if job is None:
            text = ("The last update trained without pseudo-labels (MiB on masks, or the offline pipeline): there is "
                    "nothing to review." if s.last_update is not None else "Run an update first: its training "
                    "images show up here.")
            return gr.skip(), text, 1, gr.skip()
        total = len(job.plan.tagged)
        pages = max(1, -(-total // REVIEW_PAGE))
        page = int(min(max(int(page or 1), 1), pages))
        indices = list(range((page - 1) * REVIEW_PAGE, min(page * REVIEW_PAGE, total)))
        try:
            snaps = job.render(indices)
        except Exception as err:  # the update stopped meanwhile
            return gr.skip(), error(f"could not render: {err}"), page, gr.skip()
        plan = job.plan
        tiles = []
        for snap in snaps:
            i = indices[snap.index]
            tags = ", ".join(sorted(plan.tagged.tags[i])) or "negative"
            title = f"{job.names[i]} [{tags}]" + (" REJECTED" if job.names[i] in (rejected or []) else "")
            tiles += render.snapshot_tiles(snap.image, snap.cams, snap.pseudo_label, snap.prediction, plan.colours,
                                           plan.new_names, title=title)
        s.review_view = (list(job.names), indices, 3 + len(plan.new_names))   # names: the job itself may go
        state = ("running, from the model as it is now" if job.state == "running"
                 else f"{plan.request.base_name} + {', '.join(plan.new_names)}")
        info = (f"Page {page}/{pages} of the {total} training images of the update ({state}). Click any picture of an "
                "image to reject or accept it; then re-run from the accepted images.")
        keep = [r for r in (rejected or []) if r in job.names]
        return (gr.Gallery(value=self.frames(s, "review").write(tiles), columns=2 * (3 + len(plan.new_names))),
                info, page,
                gr.Dropdown(choices=job.names, value=keep))

    def export_pseudo_labels(self, request: gr.Request):
        """(zip file, status): every training image's pseudo-label from the update's current state."""
        s = self.session(request)
        job = self._review_job(s)
        if job is None:
            return None, error("Run an update first: its pseudo-labels are exported from here.")
        plan = job.plan
        folder = s.subfolder("exports") / f"pseudo-labels-{time.strftime('%Y%m%d-%H%M%S')}"

        def work(update) -> int:
            return export_pseudo_labels(update, plan.tagged.paths, job.dataset.targets, folder,
                                        class_names=plan.class_names, colours=plan.colours, side=plan.input_side)

        try:
            count = job.between(work)
        except (RuntimeError, DataError) as err:
            return None, error(f"could not export: {err}")
        archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
        return archive, ok(f"exported {count} pseudo-labels ({', '.join(plan.new_names)}) to {Path(archive).name}: "
                           "SegmentationClass/*.png (palette, value = class id), labelmap.txt, labels.json.")

    def toggle_reject(self, request: gr.Request, evt: gr.SelectData, rejected):
        s = self.session(request)
        view = s.review_view
        if view is None or evt is None or evt.index is None:
            return gr.skip()
        names, indices, per_image = view
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        slot = index // per_image
        if slot >= len(indices):
            return gr.skip()
        name = names[indices[slot]]
        rejected = list(rejected or [])
        rejected = [r for r in rejected if r != name] if name in rejected else rejected + [name]
        return gr.Dropdown(choices=names, value=rejected)

    def rerun(self, request: gr.Request, rejected) -> Iterator[tuple]:
        """The reviewed update again, from the same base, without the rejected images. Outputs: tabs + the four
        update outputs + the review status."""
        s = self.session(request)
        job = self._review_job(s)
        if job is None or job.running:
            text = "Run an update first." if job is None else "Wait for the running update to finish (or cancel it)."
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), error(text)
            return
        old = job.plan
        keep = [i for i, n in enumerate(job.names) if n not in set(rejected or [])]
        tagged = TaggedSet(tuple(old.tagged.paths[i] for i in keep), tuple(old.tagged.tags[i] for i in keep))
        specs = [(n, rgb_to_hex(c)) for n, c in zip(old.new_names, old.new_colours)]
        try:
            plan = plan_update(old.request.base_name, old.base, tagged, specs, old.cfg,
                               source=old.request.source + " (reviewed)", no_background=old.cfg.no_background,
                               rejected=[n for n in job.names if n in set(rejected or [])])
        except DataError as err:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), error(f"{err} Nothing was started.")
            return
        names = [job.names[i] for i in keep]
        live = [keep.index(i) for i in job.live if i in keep] or watch_indices(tagged, plan.new_names,
                                                                               self.config.live_images)
        yield (gr.Tabs(selected="add"), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
               f"Re-running from {len(keep)} accepted images ({len(job.names) - len(keep)} rejected).")
        for out in self._run(s, plan, names, live):
            yield (gr.skip(), *out, gr.skip())
