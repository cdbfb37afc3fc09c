"""The page's components, one function a tab: each builds its tab inside the open ``gr.Blocks`` and sets its
components on a namespace that ``app.ui`` wires to the handlers. Layout only."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np

from app.handlers import CLASS_ROWS
from app.render import legend_html
from app.update import ADVANCED, METHOD_CHOICES, TAGS_NETWORKS, field_type
from wilss.bases import BASE_SPECS
from wilss.config import REGION_PRIORS
from wilss.conventions import hex_to_rgb
from wilss.recipes import DEMO_UPDATE, TAGS_BASE

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


def model_tab(w: SimpleNamespace) -> None:
    """The model tab's components, set on ``w``."""
    with gr.Tab("Model", id="model"):
        w.classes = gr.HTML(elem_id="model-classes")
        w.arch = gr.Markdown(elem_id="model-arch")
        # widths keep the short headers ('negatives') on one line: wrapping squeezed them to a letter a line
        w.history = gr.Dataframe(label="History of steps", interactive=False, wrap=True, elem_id="model-history",
                                 column_widths=["5%", "9%", "19%", "7%", "9%", "16%", "35%"])
        with gr.Accordion("History as stored in the checkpoint (JSON)", open=False):
            w.history_json = gr.JSON(label="history")
        with gr.Row():
            w.ckpt_upload = gr.File(label="Load another checkpoint (.pt)", elem_id="ckpt-upload", height=160)
            w.load_status = gr.Markdown(elem_id="load-status")
        with gr.Row():
            w.base_choice = gr.Dropdown(choices=list(BASE_SPECS), value=BASE_SPECS[-1], elem_id="base-choice",
                                        label="Or start from a pretrained torchvision base (background + "
                                              "the 20 PASCAL VOC classes; weights download once)")
            w.base_btn = gr.Button("Load this base", elem_id="base-btn")
        with gr.Accordion("Or start from tags alone: no model, a new one learnt from the images and tags of "
                          "the 'Data' tab (one class per tag)", open=False, elem_id="tags-start"):
            with gr.Row():
                w.tags_arch = gr.Dropdown(choices=list(TAGS_NETWORKS), value=TAGS_NETWORKS[0], label="network",
                                          info="ImageNet-initialised (installed weights); tiny: from scratch",
                                          elem_id="tags-arch")
                w.tags_epochs = gr.Number(value=TAGS_BASE.epochs, precision=0, label="epochs",
                                          elem_id="tags-epochs")
                w.tags_batch = gr.Number(value=TAGS_BASE.batch_size, precision=0, label="batch size",
                                         elem_id="tags-batch")
                w.tags_crop = gr.Number(value=TAGS_BASE.crop_size, precision=0, label="crop size (px)",
                                        elem_id="tags-crop")
            w.tags_btn = gr.Button("Start from tags alone", elem_id="tags-btn")


def data_tab(w: SimpleNamespace) -> None:
    """The data tab's components, set on ``w``."""
    with gr.Tab("Data", id="data"):
        gr.Markdown("Upload many images at once or a zip. Tags: a CSV (`filename,tags`, tags separated "
                    "by `;`, empty = negative) or JSON file, a zip with one folder per tag (negatives in "
                    "`none/` or at the top), or edit the table below. Images tagged with none of the new "
                    "classes are **negatives**: each new class needs some.")
        with gr.Row():
            w.data_files = gr.File(label="Images or zip(s)", file_count="multiple", elem_id="data-files",
                                   height=240)
            w.tags_upload = gr.File(label="Tags file (.csv or .json, optional)", elem_id="tags-file", height=240)
        with gr.Row():
            w.bring_btn = gr.Button("Use these files", variant="primary", elem_id="bring-btn")
            w.reset_btn = gr.Button("Back to the sample images", elem_id="reset-data-btn")
        w.data_status = gr.Markdown(elem_id="data-status")
        w.data_warnings = gr.Markdown(elem_id="data-warnings")
        w.counts = gr.Dataframe(label="Images per tag", interactive=False, elem_id="data-counts")
        with gr.Row(equal_height=False):
            w.tag_table = gr.Dataframe(label="Tags of each image (editable: tags separated by ';')",
                                       headers=["filename", "tags"], interactive=True, elem_id="tag-table",
                                       max_height=420, scale=1)
            w.thumbs = gr.Gallery(label="The images (tags: name)", columns=5, height=420, object_fit="contain",
                                  elem_id="data-thumbs", interactive=False, scale=1)
        w.apply_btn = gr.Button("Apply the table's tags", elem_id="apply-table-btn")


def add_tab(w: SimpleNamespace) -> None:
    """The add tab's components, set on ``w``."""
    with gr.Tab("Add classes", id="add"):
        w.names, w.colours = [], []
        for i in range(CLASS_ROWS):
            with gr.Row():
                w.names.append(gr.Textbox(label=f"new class {i + 1}" + ("" if i == 0 else " (optional)"),
                                          elem_id=f"class-name-{i}", scale=3))
                w.colours.append(gr.ColorPicker(label="colour", elem_id=f"class-colour-{i}", scale=1))
        w.watch = gr.Dropdown(label="Images to watch live (default: a few positives and a negative)",
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
            w.advanced = [widgets[name] for name, *_ in ADVANCED]
            w.no_background = widgets["no_background"]   # set from the model shown (ui.refresh_model)
            with gr.Row(equal_height=False):   # the method, and masks that make the step MiB's (docs/methods.md)
                w.method = gr.Radio(choices=list(METHOD_CHOICES), value=METHOD_CHOICES[0][1], label="method",
                                    info="how the update learns from the tags", elem_id="adv-method")
                w.step_masks = gr.File(label="Pixel masks of the tagged images (optional)", file_count="multiple",
                                       elem_id="step-masks", height=140)
            w.step_masks_status = gr.Markdown(
                "Masks: `NAME.png` per image `NAME.*` (or a zip keeping the images' folders), pixel value = class id "
                "of the updated model (the new classes after the old ones, 255 = void); with them the update trains "
                "MiB on the masks.", elem_id="step-masks-status")
        with gr.Row():
            w.start_btn = gr.Button("Add the classes", variant="primary", elem_id="start-btn")
            w.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn", interactive=False)
        w.progress = gr.HTML(elem_id="progress")
        w.run_status = gr.Markdown(elem_id="run-status")
        w.heldout_info = gr.Markdown(elem_id="heldout-info")
        w.heldout_table = gr.Dataframe(label="Held-out images: IoU (%) before and after the update",
                                       interactive=False, visible=False, elem_id="heldout-table",
                                       headers=["metric (%)", "before", "after"])
        w.losses = gr.LinePlot(x="iteration", y="value", color="loss", label="Losses", height=260,
                               elem_id="loss-plot", color_map=LOSS_COLOURS, y_title="loss value",
                               colors_in_legend=[])   # the plot's own legend is clipped: ours is below
        gr.HTML(loss_legend(), elem_id="loss-legend")
        w.live = gr.Gallery(label="Live, per image: the image · CAM of each new class · pseudo-label · "
                                  "the current model's mask",
                            columns=8, object_fit="contain", elem_id="live-gallery",
                            format="png", interactive=False)


def review_tab(w: SimpleNamespace) -> None:
    """The review tab's components, set on ``w``."""
    with gr.Tab("Review", id="review") as w.review_tab:
        w.review_info = gr.Markdown("Run an update first: its training images show up here.",
                                    elem_id="review-info")
        with gr.Row():
            w.prev_btn = gr.Button("◀ previous", elem_id="review-prev")
            w.page = gr.Number(value=1, precision=0, label="page", elem_id="review-page")
            w.next_btn = gr.Button("next ▶", elem_id="review-next")
            w.show_btn = gr.Button("Show", elem_id="review-show")
        w.review = gr.Gallery(label="Per image: the image [its tags] · CAM of each new class · pseudo-label · "
                                    "mask", columns=8,
                              object_fit="contain", format="png", elem_id="review-gallery",
                              allow_preview=False, interactive=False)
        w.rejected = gr.Dropdown(label="Rejected images (click a picture above to toggle)",
                                 multiselect=True, elem_id="rejected", allow_custom_value=True)
        w.rerun_btn = gr.Button("Re-run from the accepted images", variant="primary", elem_id="rerun-btn")
        w.review_status = gr.Markdown(elem_id="review-status")
        with gr.Row():
            w.pseudo_btn = gr.Button("Export every pseudo-label (VOC palette PNGs, for CVAT / Label Studio)",
                                     elem_id="pseudo-btn")
            w.pseudo_file = gr.File(label="Pseudo-labels (.zip)", interactive=False, elem_id="pseudo-file")


def predict_tab(w: SimpleNamespace) -> None:
    """The predict tab's components, set on ``w``."""
    with gr.Tab("Predict", id="predict"):
        with gr.Row():
            with gr.Column(scale=1):
                w.predict_file = gr.File(label="Drop an image", elem_id="predict-file")
                w.opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="mask opacity")
                w.predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
            with gr.Column(scale=2):
                w.predicted = gr.Image(label="Mask over the image", format="png", interactive=False,
                                       elem_id="predict-overlay", height=384)
                w.legend = gr.HTML(elem_id="predict-legend")
        w.predict_status = gr.Markdown(elem_id="predict-status")
        w.scores = gr.Gallery(label="Score map of each class", columns=6, format="png",
                              elem_id="score-maps", interactive=False)


def evaluate_tab(w: SimpleNamespace) -> None:
    """The evaluate tab's components, set on ``w``."""
    with gr.Tab("Evaluate", id="evaluate"):
        gr.Markdown("Images with masks: `NAME.png` per image `NAME.*`, pixel value = class id of the "
                    "**after** version (255 = void); or one zip with folders `images/` and `masks/`.")
        with gr.Row():
            w.eval_images = gr.File(label="Images (or a zip)", file_count="multiple", elem_id="eval-images",
                                    height=240)
            w.eval_masks = gr.File(label="Masks", file_count="multiple", elem_id="eval-masks", height=240)
        with gr.Row():
            w.before = gr.Dropdown(label="before", elem_id="eval-before", allow_custom_value=True)
            w.after = gr.Dropdown(label="after", elem_id="eval-after", allow_custom_value=True)
        w.eval_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
        w.eval_status = gr.Markdown(elem_id="eval-status")
        w.eval_table = gr.Dataframe(label="IoU (%)", interactive=False, elem_id="eval-table",
                                    headers=["metric (%)", "before", "after"])


def versions_tab(w: SimpleNamespace) -> None:
    """The versions tab's components, set on ``w``."""
    with gr.Tab("Versions & export", id="versions"):
        w.versions = gr.Dropdown(label="Versions (every one is kept)", elem_id="versions",
                                 allow_custom_value=True)
        w.version_info = gr.Markdown(elem_id="version-info")
        w.rollback_btn = gr.Button("Make this version current (roll back)", elem_id="rollback-btn")
        w.versions_status = gr.Markdown(elem_id="versions-status")
        with gr.Row():
            w.ckpt_file = gr.File(label="Current checkpoint (.pt; loadable by the CLI and this app)",
                                  interactive=False, elem_id="ckpt-file")
            w.onnx_file = gr.File(label="ONNX export", interactive=False, elem_id="onnx-file")
        w.onnx_btn = gr.Button("Export ONNX", elem_id="onnx-btn")
        w.ckpt_api = gr.Button(visible=False)   # the download is always ready above; this serves the API
        w.export_status = gr.Markdown(elem_id="export-status")
