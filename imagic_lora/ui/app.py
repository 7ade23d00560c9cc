"""``imagic-lora ui``: the local web app (Gradio). Train a profile, browse and share the store, edit a photo
with sliders and a before/after view, over the same API as the CLI.

Model work (train, edit) waits in one queue, whose position the page shows; browsing and cancelling
do not wait behind it. The page is drawn without torch; the studio loads it, then the first model, in
the background once the server answers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports, no version checks

import gradio as gr

from ..config import ApplyConfig
from ..validate import MAX_FILE_BYTES
from .choices import EXPORTS, PRESETS, STARTS
from .handlers import TABLE_HEADERS, Handlers

MODEL_WORK = "model"  # the concurrency group of everything that runs a model: one at a time
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # local fonts: the page fetches nothing from outside
MONO_FONTS = ["ui-monospace", "monospace"]
DEFAULTS = ApplyConfig()


def build(handlers: Handlers, models: Sequence[str]) -> gr.Blocks:
    """The page: Edit, Train and Profiles tabs wired to ``handlers``."""
    with gr.Blocks(title="imagic-lora", delete_cache=(3600, 86400)) as page:  # hourly, what is a day old
        gr.Markdown("# imagic-lora\nEdit a real photo from one sentence with its edit profile.")
        with gr.Tab("Edit", id="edit"):
            edit_profile = _edit_tab(handlers)
        with gr.Tab("Train", id="train"):
            trained = _train_tab(handlers, models)
        with gr.Tab("Profiles", id="profiles"):
            listing = _profiles_tab(handlers, edit_profile)
        page.load(handlers.listing, outputs=listing)
        trained.then(handlers.listing, outputs=listing)  # the new profile appears in the gallery
    return page


def _edit_tab(handlers: Handlers):
    with gr.Row():
        with gr.Column(scale=1):
            profile = gr.Dropdown(label="Profile", choices=[], elem_id="edit-profile")
            prompt = gr.Textbox(label="Edit prompt", placeholder="a jumping dog", elem_id="edit-prompt")
            alpha = gr.Slider(0, 1.5, value=DEFAULTS.alphas[0], step=0.05, label="α: how far toward the prompt",
                              elem_id="edit-alpha")
            with gr.Accordion("α sweep", open=False):
                sweep = gr.Checkbox(label="Sweep α instead (shown as a strip)", value=False, elem_id="edit-sweep")
                with gr.Row():
                    sweep_from = gr.Number(0.0, label="from", minimum=0, maximum=1.5)
                    sweep_to = gr.Number(1.2, label="to", minimum=0, maximum=1.5)
                    sweep_count = gr.Number(5, label="images", precision=0, minimum=2, maximum=16)
            guidance = gr.Textbox("", label="Guidance (empty: the model's own, 2 on the built-in models, 7.5 on "
                                  "SD 1.x/2.x, 5 on SDXL)", placeholder="the model's own", elem_id="edit-guidance")
            start = gr.Radio(list(STARTS), value=DEFAULTS.start, label="Start (inversion: α 0 gives the photo back)")
            keep = gr.Checkbox(DEFAULTS.keep, label="Keep the photo's pixels where the edit did not act "
                               "(a tint or a style is kept whole; turn off to let the model redraw everything)")
            with gr.Row():
                steps = gr.Number(DEFAULTS.steps, label="Steps", precision=0, minimum=1)
                seed = gr.Number(DEFAULTS.seed, label="Seed (noise start)", precision=0, minimum=0)
            run = gr.Button("Edit", variant="primary", elem_id="edit-run")
        with gr.Column(scale=2):
            slider = gr.ImageSlider(label="Before / after", type="pil", format="png", elem_id="edit-result")
            strip = gr.Gallery(label="α sweep", columns=8, height=200, visible=False, fit_columns=False,
                               object_fit="contain", elem_id="edit-strip")
            download = gr.DownloadButton("Download PNG", visible=False, elem_id="edit-download")
            status = gr.Markdown(elem_id="edit-status")
    run.click(handlers.edit, [profile, prompt, alpha, sweep, sweep_from, sweep_to, sweep_count, guidance,
                                      start, keep, steps, seed], [slider, strip, download, status],
              concurrency_id=MODEL_WORK, concurrency_limit=1)
    return profile


def _train_tab(handlers: Handlers, models: Sequence[str]):
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="train-photo")
            preview = gr.Image(label="As the model will see it", interactive=False, height=256)
        with gr.Column():
            name = gr.Textbox(label="Profile name", placeholder="dog", elem_id="train-name")
            prompt = gr.Textbox(label="What the photo shows", placeholder="a photo of a dog", elem_id="train-prompt")
            model = gr.Dropdown(list(models), value=models[0], label="Base model")
            preset = gr.Dropdown(list(PRESETS), value=next(iter(PRESETS)), label="Schedule", elem_id="train-schedule")
            with gr.Row():
                run = gr.Button("Train", variant="primary", elem_id="train-run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            bar = gr.HTML(elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
    upload.change(handlers.preview, upload, [preview, status])
    trained = run.click(handlers.train, [upload, name, prompt, model, preset], [bar, status],
                        concurrency_id=MODEL_WORK, concurrency_limit=1)
    cancel.click(handlers.cancel, None, status, concurrency_limit=None)
    return trained


def _profiles_tab(handlers: Handlers, edit_profile: gr.Dropdown) -> list:
    gallery = gr.Gallery(label="Stored profiles", columns=6, height=260, allow_preview=False, fit_columns=False,
                         object_fit="contain", elem_id="gallery")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="profiles-table")
    with gr.Row():
        with gr.Column():
            profile = gr.Dropdown(label="Profile", choices=[], elem_id="profiles-pick")
            with gr.Row():
                new_name = gr.Textbox(label="New name", elem_id="rename-to")
                rename = gr.Button("Rename", elem_id="rename")
            delete = gr.Button("Delete...", variant="stop", elem_id="delete")
            with gr.Row(visible=False) as confirm:
                really = gr.Button("Yes, delete it", variant="stop", elem_id="delete-confirm")
                keep = gr.Button("No, keep it", elem_id="delete-keep")
        with gr.Column():
            kind = gr.Radio(list(EXPORTS), value=EXPORTS[0], label="Export as")
            export = gr.Button("Export", elem_id="export")
            exported = gr.DownloadButton("Download", visible=False, elem_id="export-download")
            upload = gr.File(label="Import a profile file", file_types=[".safetensors"], type="filepath",
                             elem_id="import-file")
            do_import = gr.Button("Import", elem_id="import")
    status = gr.Markdown(elem_id="profiles-status")
    listing = [gallery, table, profile, edit_profile, status]
    gallery.select(handlers.picked, None, [profile, edit_profile])
    rename.click(handlers.rename, [profile, new_name], listing)
    delete.click(lambda: gr.update(visible=True), None, confirm)
    keep.click(lambda: gr.update(visible=False), None, confirm)
    really.click(handlers.delete, profile, listing).then(lambda: gr.update(visible=False), None, confirm)
    export.click(handlers.export, [profile, kind], [exported, status])
    do_import.click(handlers.imported, upload, listing)
    return listing


def serve(models: Sequence[str], host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str | None = None, dtype: str | None = None, say: Callable[[str], None] = print) -> None:
    """Serve the app until interrupted; load the studio and the first model in the background meanwhile."""
    out_dir = Path(tempfile.mkdtemp(prefix="imagic-lora-ui-"))  # edits and exports, served for download

    def make_studio():
        from .studio import Studio

        return Studio(models, device, dtype, out_dir=out_dir)

    handlers = Handlers(make_studio)
    page = build(handlers, models)
    page.queue(default_concurrency_limit=1)
    theme = gr.themes.Default(font=FONTS, font_mono=MONO_FONTS)
    _, url, share_url = page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                    quiet=True, ssr_mode=False, max_file_size=MAX_FILE_BYTES, footer_links=[],
                                    theme=theme, allowed_paths=[str(out_dir)])
    say(f"Serving {url} (Ctrl+C to stop)" + (f"; shared at {share_url}" if share_url else ""))
    threading.Thread(target=lambda: handlers.studio().model(models[0]), name="warm-up", daemon=True).start()
    try:
        page.block_thread()
    finally:
        page.close()
        shutil.rmtree(out_dir, ignore_errors=True)
