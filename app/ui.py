"""The page: a ``gr.Blocks`` with one tab per capability, wired to ``app.handlers``. Layout only."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from starlette.middleware import Middleware

from app.handlers import Handlers
from app.layout import (INTRO, SHIPPED_BASE_NOTE, add_tab, data_tab, evaluate_tab, model_tab, predict_tab,
                        review_tab, versions_tab)
from app.serving import QuietDisconnects, limit_arenas
from app.session import AppConfig
from app.session_files import SECRET, state_secret
from app.update_handlers import UpdateHandlers
from models import DEFAULT_CHECKPOINT

CSS = """
.wilss-swatch {display:inline-block; width:1.1em; height:1.1em; border:1px solid #444; vertical-align:middle;
               margin-right:0.35em; border-radius:2px}
.wilss-legend {display:flex; flex-wrap:wrap; gap:0.4em 1.2em; padding:0.4em 0}
.wilss-legend-title {width:100%; font-weight:600}
.wilss-legend-item {white-space:nowrap}
.wilss-classes td, .wilss-classes th {padding:2px 10px}
.wilss-progress {padding:0.5em 0}
.wilss-bar {height:14px; background:#e5e7eb; border-radius:7px; overflow:hidden}
.wilss-fill {height:100%; background:#2563eb; transition:width 0.3s}
.wilss-fill.wilss-warmup {background:#f59e0b}
.wilss-progress-text, .wilss-progress-losses {margin-top:0.3em; font-size:0.95em}
.wilss-msg-error {color:#b91c1c; font-weight:600}
.wilss-msg-done {color:#15803d; font-weight:600}
.wilss-msg-wait, .wilss-msg-cancelled {color:#92400e; font-weight:600}
"""

# gradio 6.31 shows its status key 'common.complete' untranslated when an event ends (its English table lacks it)
I18N = gr.I18n(en={"common.complete": "Done"})

def build(config: AppConfig) -> tuple[gr.Blocks, Handlers]:
    """The app's Blocks and its handlers (one session per browser tab)."""
    h = Handlers(config)
    u = UpdateHandlers(h)
    # rendered pictures pile up in gradio's cache during updates: drop those older than 6 h, hourly
    with gr.Blocks(title="wilss: add classes from image tags", analytics_enabled=False,
                   delete_cache=(3600, 6 * 3600)) as demo:
        shipped = Path(config.checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve()
        gr.Markdown(INTRO + ("\n\n" + SHIPPED_BASE_NOTE if shipped else ""), elem_id="intro")
        w = SimpleNamespace(header=gr.Markdown(elem_id="header"))
        with gr.Tabs(elem_id="tabs") as w.tabs:
            for tab in (model_tab, data_tab, add_tab, review_tab, predict_tab, evaluate_tab, versions_tab):
                tab(w)
        w.model_views = [w.header, w.classes, w.arch, w.history, w.history_json, w.versions, w.version_info,
                         w.ckpt_file, w.legend, w.before, w.after]
        w.data_views = [w.data_status, w.counts, w.data_warnings, w.tag_table, w.watch, *w.names, *w.colours,
                        w.thumbs]
        w.run_outputs = [w.progress, w.run_status, w.losses, w.live]
        # the page's session survives a reload: the browser stores a token naming it (app.session_files)
        token = gr.BrowserState(None, storage_key="wilss-session", secret=state_secret(config.workdir))
        demo.load(h.attach, token, token, api_visibility="private").then(
            h.model_views, None, w.model_views, api_name="model_info").then(
            h.no_background_box, None, w.no_background, api_visibility="private").then(
            h.data_views, None, w.data_views, api_name="data_info")
        demo.unload(h.close_session)
        wire_model_and_data(w, h, u)
        wire_update_and_review(w, h, u)
        wire_use(w, h)
    return demo, h


def refresh_model(w: SimpleNamespace, h: Handlers, event):
    """After an event that may change the current model: its views (and the no-background box, from it), the data
    views (which tags name known classes, the new-class rows), the prediction of the dropped image by the current
    model, and no export of another version."""
    return event.then(h.model_views, None, w.model_views, api_visibility="private").then(
        h.no_background_box, None, w.no_background, api_visibility="private").then(
        h.data_views, None, w.data_views, api_visibility="private").then(
        h.predict_current, [w.predict_file, w.opacity], [w.predicted, w.legend, w.scores, w.predict_status],
        api_visibility="private").then(
        lambda: (None, ""), None, [w.onnx_file, w.export_status], api_visibility="private")


def live_cancel(w: SimpleNamespace, button) -> None:
    """Cancel is live from the click until the run ends (a refused second click leaves it as the job is)."""
    button.click(lambda: gr.Button(interactive=True), None, w.cancel_btn, queue=False, api_visibility="private")


def wire_model_and_data(w: SimpleNamespace, h: Handlers, u: UpdateHandlers) -> None:
    refresh_model(w, h, w.ckpt_upload.upload(h.load_checkpoint, w.ckpt_upload, w.load_status,
                                             api_name="load_checkpoint"))
    refresh_model(w, h, w.base_btn.click(h.load_base, w.base_choice, w.load_status, api_name="load_base"))
    # a new model from the Data tab's tags: streamed into the update's live gallery, cancelled by its button
    live_cancel(w, w.tags_btn)
    refresh_model(w, h, w.tags_btn.click(
        u.start_from_tags, [w.tags_arch, w.tags_epochs, w.tags_batch, w.tags_crop],
        [w.tabs, *w.run_outputs, w.load_status], api_name="start_from_tags", concurrency_limit=8,
        concurrency_id="update").then(u.cancel_button, None, w.cancel_btn, api_visibility="private"))
    w.bring_btn.click(h.bring_data, [w.data_files, w.tags_upload], w.data_views, api_name="bring_data")
    w.reset_btn.click(h.reset_data, None, w.data_views, api_name="reset_data")
    w.apply_btn.click(h.apply_table, w.tag_table, w.data_views, api_name="apply_table")


def wire_update_and_review(w: SimpleNamespace, h: Handlers, u: UpdateHandlers) -> None:
    # add classes: one update per device at a time (our DeviceQueue shows the place in line)
    live_cancel(w, w.start_btn)
    refresh_model(w, h, w.start_btn.click(
        u.add_classes, [*w.names, *w.colours, w.watch, *w.advanced, w.method], w.run_outputs, api_name="add_classes",
        concurrency_limit=8, concurrency_id="update").then(
        u.cancel_button, None, w.cancel_btn, api_visibility="private").then(
        u.heldout_scores, None, [w.heldout_info, w.heldout_table], api_name="heldout_scores", concurrency_limit=2))
    w.step_masks.change(u.set_step_masks, w.step_masks, w.step_masks_status, api_name="step_masks",
                        concurrency_limit=None)
    w.cancel_btn.click(u.cancel, None, w.run_status, api_name="cancel", concurrency_limit=None, queue=False)
    review_inputs = [w.page, w.rejected]
    review_outputs = [w.review, w.review_info, w.page, w.rejected]
    w.show_btn.click(u.review_page, review_inputs, review_outputs, api_name="review_page", concurrency_limit=4)
    w.review_tab.select(u.review_page, review_inputs, review_outputs, api_visibility="private",
                        concurrency_limit=4)
    w.prev_btn.click(lambda p: max(1, int(p or 1) - 1), w.page, w.page, api_visibility="private").then(
        u.review_page, review_inputs, review_outputs, api_visibility="private")
    w.next_btn.click(lambda p: int(p or 1) + 1, w.page, w.page, api_visibility="private").then(
        u.review_page, review_inputs, review_outputs, api_visibility="private")
    w.review.select(u.toggle_reject, w.rejected, w.rejected, api_visibility="private")
    w.pseudo_btn.click(u.export_pseudo_labels, None, [w.pseudo_file, w.review_status],
                       api_name="export_pseudo_labels", concurrency_limit=1)
    live_cancel(w, w.rerun_btn)
    refresh_model(w, h, w.rerun_btn.click(
        u.rerun, w.rejected, [w.tabs, *w.run_outputs, w.review_status], api_name="rerun", concurrency_limit=8,
        concurrency_id="update").then(
        u.cancel_button, None, w.cancel_btn, api_visibility="private").then(
        u.heldout_scores, None, [w.heldout_info, w.heldout_table], api_visibility="private", concurrency_limit=2))


def wire_use(w: SimpleNamespace, h: Handlers) -> None:
    """Predict, evaluate, versions and export."""
    # predict: its own concurrency group, so it answers while an update trains
    predict_event = dict(fn=h.predict, inputs=[w.predict_file, w.opacity],
                         outputs=[w.predicted, w.legend, w.scores, w.predict_status], concurrency_limit=4,
                         concurrency_id="predict")
    w.predict_btn.click(**predict_event, api_name="predict")
    w.predict_file.upload(**predict_event, api_visibility="private")
    w.eval_btn.click(h.evaluate, [w.eval_images, w.eval_masks, w.before, w.after], [w.eval_table, w.eval_status],
                     api_name="evaluate", concurrency_limit=2)
    w.versions.change(h.version_info, w.versions, w.version_info, api_visibility="private")
    refresh_model(w, h, w.rollback_btn.click(h.rollback, w.versions, w.versions_status, api_name="rollback"))
    w.ckpt_api.click(h.checkpoint_file, None, w.ckpt_file, api_name="checkpoint_file")
    w.onnx_btn.click(h.export_onnx, None, [w.onnx_file, w.export_status], api_name="export_onnx",
                     concurrency_limit=1)


def launch(config: AppConfig, *, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
           block: bool = True, quiet: bool = False):
    """Launch the app; only ``config.workdir`` is served (plus gradio's own cache, which lives inside it). Gradio
    keeps its own state for each session (a copy of every component's config: about 0.3 MB for this page), by
    default for 10,000 sessions; it keeps it for as many as the app holds (``SessionStore.capacity``), which is safe
    because the app keeps nothing in gradio's server-side state (the page's token is in the browser)."""
    workdir = Path(config.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("GRADIO_TEMP_DIR") != str(workdir / "cache"):
        raise RuntimeError("set GRADIO_TEMP_DIR to <workdir>/cache before importing gradio (launch.py does)")
    limit_arenas()   # before the server's threads start (app.serving)
    demo, handlers = build(config)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, auth=auth, max_file_size=f"{config.max_upload_mb}mb",
                allowed_paths=[str(workdir)], ssr_mode=False, share=False, prevent_thread_lock=not block,
                quiet=quiet, show_error=True, css=CSS, theme=gr.themes.Default(), footer_links=["api"],
                state_session_capacity=handlers.store.capacity,
                mcp_server=False, i18n=I18N, app_kwargs={"middleware": [Middleware(QuietDisconnects)]},
                blocked_paths=[str(workdir / SECRET)])   # the key that names session folders
    return demo, handlers
