"""The page: a ``gr.Blocks`` with one tab per capability, wired to ``app.handlers``. Layout only."""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import numpy as np

from app.handlers import CLASS_ROWS, Handlers
from app.update_handlers import UpdateHandlers
from app.render import legend_html
from app.session import AppConfig
from app.session_files import SECRET
from app.update import ADVANCED, field_type
from models import DEFAULT_CHECKPOINT
from wilss.bases import BASE_SPECS
from wilss.conventions import hex_to_rgb
from wilss.config import REGION_PRIORS
from wilss.recipes import DEMO_UPDATE

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

# l_CLS, l_LOC, l_SEG (Eq. 3, 4, 8), feature distillation and PAMR self-training, and their sum
LOSS_COLOURS = {"cls": "#2563eb", "loc": "#f59e0b", "seg": "#16a34a", "fd": "#9333ea", "self": "#db2777",
                "total": "#111827"}

LOSS_TEXT = {"cls": "l_CLS (Eq. 3)", "loc": "l_LOC (Eq. 4)", "seg": "l_SEG (Eq. 8)", "fd": "feature distillation",
             "self": "PAMR self-training", "total": "total"}


def loss_legend() -> str:
    colours = np.array([hex_to_rgb(c) for c in LOSS_COLOURS.values()], dtype=np.uint8)
    return legend_html([LOSS_TEXT[k] for k in LOSS_COLOURS], colours)


INTRO = """# wilss: add classes to a segmentation model from image tags
Teach the model new classes from images tagged only with *this image shows a …* (WILSON, CVPR 2022).
**Model** shows what it knows · **Data** brings tagged images · **Add classes** runs the update live ·
**Review** checks its pseudo-labels · **Predict** / **Evaluate** try it ·
**Versions & export** keeps every version."""

SHIPPED_BASE_NOTE = """*The model loaded here is the shipped base: a small network trained on generated shapes (discs,
squares, stars ...), for trying the tool offline. It has never seen a photo; for real images, start from a real
model (Model tab, or `--checkpoint`: see docs/bases.md).*"""


def _advanced_widget(name: str, label: str, info: str):
    kind, value = field_type(name), getattr(DEMO_UPDATE, name)
    if kind is bool:
        return gr.Checkbox(value=value, label=label, info=info, elem_id=f"adv-{name}", min_width=240)
    if kind is str and name == "replay_classes":   # free text: old class names, comma-separated
        return gr.Textbox(value=value, label=label, info=info, elem_id=f"adv-{name}", min_width=170)
    if kind is str:                # a choice: the region prior
        return gr.Dropdown(choices=list(REGION_PRIORS), value=value, label=label, info=info, elem_id=f"adv-{name}",
                           min_width=170)
    if kind is int:
        return gr.Number(value=value, label=label, info=info, precision=0, elem_id=f"adv-{name}", min_width=170)
    return gr.Number(value=value, label=label, info=info, elem_id=f"adv-{name}", min_width=170)


def build(config: AppConfig) -> tuple[gr.Blocks, Handlers]:
    """The app's Blocks and its handlers (one session per browser tab)."""
    h = Handlers(config)
    u = UpdateHandlers(h)
    # rendered pictures pile up in gradio's cache during updates: drop those older than 6 h, hourly
    with gr.Blocks(title="wilss: add classes from image tags", analytics_enabled=False,
                   delete_cache=(3600, 6 * 3600)) as demo:
        shipped = Path(config.checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve()
        gr.Markdown(INTRO + ("\n\n" + SHIPPED_BASE_NOTE if shipped else ""), elem_id="intro")
        header = gr.Markdown(elem_id="header")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------------------------- model
            with gr.Tab("Model", id="model"):
                classes = gr.HTML(elem_id="model-classes")
                arch = gr.Markdown(elem_id="model-arch")
                # widths keep the short headers ('negatives') on one line: wrapping squeezed them to a letter a line
                history = gr.Dataframe(label="History of steps", interactive=False, wrap=True, elem_id="model-history",
                                       column_widths=["5%", "9%", "19%", "7%", "9%", "16%", "35%"])
                with gr.Accordion("History as stored in the checkpoint (JSON)", open=False):
                    history_json = gr.JSON(label="history")
                with gr.Row():
                    ckpt_upload = gr.File(label="Load another checkpoint (.pt)", elem_id="ckpt-upload", height=160)
                    load_status = gr.Markdown(elem_id="load-status")
                with gr.Row():
                    base_choice = gr.Dropdown(choices=list(BASE_SPECS), value=BASE_SPECS[-1], elem_id="base-choice",
                                              label="Or start from a pretrained torchvision base (background + "
                                                    "the 20 PASCAL VOC classes; weights download once)")
                    base_btn = gr.Button("Load this base", elem_id="base-btn")
            # ----------------------------------------------------------------------------------- data
            with gr.Tab("Data", id="data"):
                gr.Markdown("Upload many images at once or a zip. Tags: a CSV (`filename,tags`, tags separated "
                            "by `;`, empty = negative) or JSON file, a zip with one folder per tag (negatives in "
                            "`none/` or at the top), or edit the table below. Images tagged with none of the new "
                            "classes are **negatives**: each new class needs some.")
                with gr.Row():
                    data_files = gr.File(label="Images or zip(s)", file_count="multiple", elem_id="data-files",
                                         height=240)
                    tags_upload = gr.File(label="Tags file (.csv or .json, optional)", elem_id="tags-file", height=240)
                with gr.Row():
                    bring_btn = gr.Button("Use these files", variant="primary", elem_id="bring-btn")
                    reset_btn = gr.Button("Back to the sample images", elem_id="reset-data-btn")
                data_status = gr.Markdown(elem_id="data-status")
                data_warnings = gr.Markdown(elem_id="data-warnings")
                counts = gr.Dataframe(label="Images per tag", interactive=False, elem_id="data-counts")
                with gr.Row(equal_height=False):
                    tag_table = gr.Dataframe(label="Tags of each image (editable: tags separated by ';')",
                                             headers=["filename", "tags"], interactive=True, elem_id="tag-table",
                                             max_height=420, scale=1)
                    thumbs = gr.Gallery(label="The images (tags: name)", columns=5, height=420, object_fit="contain",
                                        elem_id="data-thumbs", interactive=False, scale=1)
                apply_btn = gr.Button("Apply the table's tags", elem_id="apply-table-btn")
            # ---------------------------------------------------------------------------- add classes
            with gr.Tab("Add classes", id="add"):
                names, colours = [], []
                for i in range(CLASS_ROWS):
                    with gr.Row():
                        names.append(gr.Textbox(label=f"new class {i + 1}" + ("" if i == 0 else " (optional)"),
                                                elem_id=f"class-name-{i}", scale=3))
                        colours.append(gr.ColorPicker(label="colour", elem_id=f"class-colour-{i}", scale=1))
                watch = gr.Dropdown(label="Images to watch live (default: a few positives and a negative)",
                                    multiselect=True, elem_id="watch", allow_custom_value=True)
                with gr.Accordion("Advanced: the paper's settings (defaults: the demo recipe)", open=False,
                                  elem_id="advanced"):
                    widgets = {}
                    with gr.Row(equal_height=False):   # numbers first, then the switches (wider, for their help)
                        for name, label, info in ADVANCED:
                            if field_type(name) is not bool:
                                widgets[name] = _advanced_widget(name, label, info)
                    with gr.Row(equal_height=False):
                        for name, label, info in ADVANCED:
                            if field_type(name) is bool:
                                widgets[name] = _advanced_widget(name, label, info)
                    advanced = [widgets[name] for name, *_ in ADVANCED]
                with gr.Row():
                    start_btn = gr.Button("Add the classes", variant="primary", elem_id="start-btn")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", interactive=False)
                progress = gr.HTML(elem_id="progress")
                run_status = gr.Markdown(elem_id="run-status")
                heldout_info = gr.Markdown(elem_id="heldout-info")
                heldout_table = gr.Dataframe(label="Held-out images: IoU (%) before and after the update",
                                             interactive=False, visible=False, elem_id="heldout-table",
                                             headers=["metric (%)", "before", "after"])
                losses = gr.LinePlot(x="iteration", y="value", color="loss", label="Losses", height=260,
                                     elem_id="loss-plot", color_map=LOSS_COLOURS, y_title="loss value",
                                     colors_in_legend=[])   # the plot's own legend is clipped: ours is below
                gr.HTML(loss_legend(), elem_id="loss-legend")
                live = gr.Gallery(label="Live, per image: the image · CAM of each new class · pseudo-label · "
                                        "the current model's mask",
                                  columns=8, object_fit="contain", elem_id="live-gallery",
                                  format="png", interactive=False)
            # --------------------------------------------------------------------------------- review
            with gr.Tab("Review", id="review") as review_tab:
                review_info = gr.Markdown("Run an update first: its training images show up here.",
                                          elem_id="review-info")
                with gr.Row():
                    prev_btn = gr.Button("◀ previous", elem_id="review-prev")
                    page = gr.Number(value=1, precision=0, label="page", elem_id="review-page")
                    next_btn = gr.Button("next ▶", elem_id="review-next")
                    show_btn = gr.Button("Show", elem_id="review-show")
                review = gr.Gallery(label="Per image: the image [its tags] · CAM of each new class · pseudo-label · "
                                          "mask", columns=8,
                                    object_fit="contain", format="png", elem_id="review-gallery",
                                    allow_preview=False, interactive=False)
                rejected = gr.Dropdown(label="Rejected images (click a picture above to toggle)",
                                       multiselect=True, elem_id="rejected", allow_custom_value=True)
                rerun_btn = gr.Button("Re-run from the accepted images", variant="primary", elem_id="rerun-btn")
                review_status = gr.Markdown(elem_id="review-status")
                with gr.Row():
                    pseudo_btn = gr.Button("Export every pseudo-label (VOC palette PNGs, for CVAT / Label Studio)",
                                           elem_id="pseudo-btn")
                    pseudo_file = gr.File(label="Pseudo-labels (.zip)", interactive=False, elem_id="pseudo-file")
            # -------------------------------------------------------------------------------- predict
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    with gr.Column(scale=1):
                        predict_file = gr.File(label="Drop an image", elem_id="predict-file")
                        opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity")
                        predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                    with gr.Column(scale=2):
                        predicted = gr.Image(label="Mask over the image", format="png", interactive=False,
                                             elem_id="predict-overlay", height=384)
                        legend = gr.HTML(elem_id="predict-legend")
                predict_status = gr.Markdown(elem_id="predict-status")
                scores = gr.Gallery(label="Score map of each class", columns=6, format="png",
                                    elem_id="score-maps", interactive=False)
            # ------------------------------------------------------------------------------- evaluate
            with gr.Tab("Evaluate", id="evaluate"):
                gr.Markdown("Images with masks: `NAME.png` per image `NAME.*`, pixel value = class id of the "
                            "**after** version (255 = void); or one zip with folders `images/` and `masks/`.")
                with gr.Row():
                    eval_images = gr.File(label="Images (or a zip)", file_count="multiple", elem_id="eval-images",
                                          height=240)
                    eval_masks = gr.File(label="Masks", file_count="multiple", elem_id="eval-masks", height=240)
                with gr.Row():
                    before = gr.Dropdown(label="before", elem_id="eval-before", allow_custom_value=True)
                    after = gr.Dropdown(label="after", elem_id="eval-after", allow_custom_value=True)
                eval_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
                eval_status = gr.Markdown(elem_id="eval-status")
                eval_table = gr.Dataframe(label="IoU (%)", interactive=False, elem_id="eval-table",
                                          headers=["metric (%)", "before", "after"])
            # ------------------------------------------------------------------------------- versions
            with gr.Tab("Versions & export", id="versions"):
                versions = gr.Dropdown(label="Versions (every one is kept)", elem_id="versions",
                                       allow_custom_value=True)
                version_info = gr.Markdown(elem_id="version-info")
                rollback_btn = gr.Button("Make this version current (roll back)", elem_id="rollback-btn")
                versions_status = gr.Markdown(elem_id="versions-status")
                with gr.Row():
                    ckpt_file = gr.File(label="Current checkpoint (.pt; loadable by the CLI and this app)",
                                        interactive=False, elem_id="ckpt-file")
                    onnx_file = gr.File(label="ONNX export", interactive=False, elem_id="onnx-file")
                onnx_btn = gr.Button("Export ONNX", elem_id="onnx-btn")
                ckpt_api = gr.Button(visible=False)   # the download is always ready above; this serves the API
                export_status = gr.Markdown(elem_id="export-status")

        model_views = [header, classes, arch, history, history_json, versions, version_info, ckpt_file, legend,
                       before, after]
        data_views = [data_status, counts, data_warnings, tag_table, watch, *names, *colours, thumbs]
        run_outputs = [progress, run_status, losses, live]

        def refresh_model(event):
            """After an event that may change the current model: its views, the data views (which tags name known
            classes, the new-class rows), the prediction of the dropped image by the current model, and no export
            of another version."""
            return event.then(h.model_views, None, model_views, api_visibility="private").then(
                h.data_views, None, data_views, api_visibility="private").then(
                h.predict_current, [predict_file, opacity], [predicted, legend, scores, predict_status],
                api_visibility="private").then(
                lambda: (None, ""), None, [onnx_file, export_status], api_visibility="private")

        demo.load(h.model_views, None, model_views, api_name="model_info").then(
            h.data_views, None, data_views, api_name="data_info")
        demo.unload(h.close_session)
        # model
        refresh_model(ckpt_upload.upload(h.load_checkpoint, ckpt_upload, load_status, api_name="load_checkpoint"))
        refresh_model(base_btn.click(h.load_base, base_choice, load_status, api_name="load_base"))
        # data
        bring_btn.click(h.bring_data, [data_files, tags_upload], data_views, api_name="bring_data")
        reset_btn.click(h.reset_data, None, data_views, api_name="reset_data")
        apply_btn.click(h.apply_table, tag_table, data_views, api_name="apply_table")
        # add classes: one update per device at a time (our DeviceQueue shows the place in line)
        # Cancel is live from the click until the update ends (a refused second click leaves it as the job is)
        start_btn.click(lambda: gr.Button(interactive=True), None, cancel_btn, queue=False, api_visibility="private")
        refresh_model(start_btn.click(u.add_classes, [*names, *colours, watch, *advanced], run_outputs,
                                      api_name="add_classes", concurrency_limit=8, concurrency_id="update").then(
            u.cancel_button, None, cancel_btn, api_visibility="private").then(
            u.heldout_scores, None, [heldout_info, heldout_table], api_name="heldout_scores", concurrency_limit=2))
        cancel_btn.click(u.cancel, None, run_status, api_name="cancel", concurrency_limit=None, queue=False)
        # review
        review_inputs = [page, rejected]
        review_outputs = [review, review_info, page, rejected]
        show_btn.click(u.review_page, review_inputs, review_outputs, api_name="review_page", concurrency_limit=4)
        review_tab.select(u.review_page, review_inputs, review_outputs, api_visibility="private", concurrency_limit=4)
        prev_btn.click(lambda p: max(1, int(p or 1) - 1), page, page, api_visibility="private").then(
            u.review_page, review_inputs, review_outputs, api_visibility="private")
        next_btn.click(lambda p: int(p or 1) + 1, page, page, api_visibility="private").then(
            u.review_page, review_inputs, review_outputs, api_visibility="private")
        review.select(u.toggle_reject, rejected, rejected, api_visibility="private")
        pseudo_btn.click(u.export_pseudo_labels, None, [pseudo_file, review_status], api_name="export_pseudo_labels",
                         concurrency_limit=1)
        rerun_btn.click(lambda: gr.Button(interactive=True), None, cancel_btn, queue=False, api_visibility="private")
        refresh_model(rerun_btn.click(u.rerun, rejected, [tabs, *run_outputs, review_status], api_name="rerun",
                                      concurrency_limit=8, concurrency_id="update").then(
            u.cancel_button, None, cancel_btn, api_visibility="private").then(
            u.heldout_scores, None, [heldout_info, heldout_table], api_visibility="private", concurrency_limit=2))
        # predict: its own concurrency group, so it answers while an update trains
        predict_event = dict(fn=h.predict, inputs=[predict_file, opacity],
                             outputs=[predicted, legend, scores, predict_status], concurrency_limit=4,
                             concurrency_id="predict")
        predict_btn.click(**predict_event, api_name="predict")
        predict_file.upload(**predict_event, api_visibility="private")
        # evaluate
        eval_btn.click(h.evaluate, [eval_images, eval_masks, before, after], [eval_table, eval_status],
                       api_name="evaluate", concurrency_limit=2)
        # versions & export
        versions.change(h.version_info, versions, version_info, api_visibility="private")
        refresh_model(rollback_btn.click(h.rollback, versions, versions_status, api_name="rollback"))
        ckpt_api.click(h.checkpoint_file, None, ckpt_file, api_name="checkpoint_file")
        onnx_btn.click(h.export_onnx, None, [onnx_file, export_status], api_name="export_onnx", concurrency_limit=1)
    return demo, h


def launch(config: AppConfig, *, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
           block: bool = True, quiet: bool = False):
    """Launch the app; only ``config.workdir`` is served (plus gradio's own cache, which lives inside it)."""
    workdir = Path(config.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("GRADIO_TEMP_DIR") != str(workdir / "cache"):
        raise RuntimeError("set GRADIO_TEMP_DIR to <workdir>/cache before importing gradio (launch.py does)")
    demo, handlers = build(config)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=host, server_port=port, auth=auth, max_file_size=f"{config.max_upload_mb}mb",
                allowed_paths=[str(workdir)], ssr_mode=False, share=False, prevent_thread_lock=not block,
                quiet=quiet, show_error=True, css=CSS, theme=gr.themes.Default(), footer_links=["api"],
                mcp_server=False, i18n=I18N, blocked_paths=[str(workdir / SECRET)])   # the key that names session folders
    return demo, handlers
