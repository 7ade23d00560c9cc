"""What each button of the web app does: call the :class:`~.studio.Studio`, turn its result or error into
what the page shows. Every error becomes the CLI's one line (``Error: ...``), never a traceback.

The studio (and with it torch) is imported on first use, so the page answers before the model loads.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ..crash import crash_message
from ..errors import ImagicError, InvalidConfig
from .choices import PRESETS

TABLE_HEADERS = ["name", "describes", "base model", "created", "size"]


def said(ex: BaseException) -> str:
    """The one line a user sees for ``ex``: the library's own message, or where the traceback went."""
    message = str(ex) if isinstance(ex, ImagicError) else crash_message(ex)
    return f"Error: {message}"


def _one_line(text: str) -> str:
    return html.escape(text.replace("\n", " "))


@dataclass
class Handlers:
    """The page's callbacks, sharing one studio and the one training that may be running."""

    make_studio: Callable[[], Any]
    _studio: Any = None
    _studio_lock: threading.Lock = field(default_factory=threading.Lock)
    _training: dict = field(default_factory=dict)  # "watch", "thread": the running training

    def studio(self):
        with self._studio_lock:
            if self._studio is None:
                self._studio = self.make_studio()
            return self._studio

    # profiles

    def listing(self) -> tuple:
        """Gallery, table and both profile pickers, refreshed from the store; a status line (last, so a caller
        may leave it out)."""
        try:
            cards = self.studio().cards()
        except Exception as ex:
            return [], [], gr.update(choices=[]), gr.update(choices=[]), said(ex)
        names = [card.name for card in cards]
        gallery = [(card.thumbnail, card.caption) for card in cards]
        table = [[c.name, c.source_prompt, c.base_model, c.created_at, f"{c.size_bytes / 2**20:.1f} MiB"]
                 for c in cards]
        pick = names[0] if names else None
        status = f"{len(names)} profile(s) in the store" if names else "No profiles yet: train one first."
        return gallery, table, gr.update(choices=names, value=pick), gr.update(choices=names, value=pick), status

    def refreshed(self) -> tuple:
        """The listing without its status line."""
        return self.listing()[:4]

    def picked(self, event: gr.SelectData) -> tuple:
        """The profile clicked in the gallery becomes the one the buttons act on, in both tabs."""
        names = self.studio().store().names()  # the gallery's order: by name
        name = names[event.index] if 0 <= event.index < len(names) else None
        return name, name

    def rename(self, old: str | None, new: str) -> tuple:
        return self._changed(lambda: self.studio().rename(_required(old), new.strip()),
                             f"Renamed profile {old!r} to {new.strip()!r}")

    def delete(self, name: str | None) -> tuple:
        return self._changed(lambda: self.studio().delete(_required(name)), f"Deleted profile {name!r}")

    def imported(self, upload: str | None) -> tuple:
        if not upload:
            return (*self.refreshed(), "Error: choose a profile file to upload first")
        outcome: dict = {}
        listing = self._changed(lambda: outcome.setdefault("profile", self.studio().import_file(upload)), "")
        if "profile" in outcome:
            return (*listing[:4], f"Imported profile {outcome['profile'].name!r}")
        return listing

    def _changed(self, change: Callable[[], object], done: str) -> tuple:
        try:
            change()
        except Exception as ex:
            return (*self.refreshed(), said(ex))
        return (*self.refreshed(), done)

    def export(self, name: str | None, kind: str) -> tuple:
        try:
            path = self.studio().export(_required(name), kind)
        except Exception as ex:
            return gr.update(value=None, visible=False), said(ex)
        return gr.update(value=str(path), visible=True, label=f"Download {path.name}"), f"Exported {path.name}"

    # training

    def preview(self, upload: str | None) -> tuple:
        """The uploaded photo after train's own checks, or the reason it cannot be used."""
        if not upload:
            return None, ""
        try:
            return self.studio().preview(upload), "Photo ready."
        except Exception as ex:
            return None, said(ex)

    def train(self, upload: str | None, name: str, prompt: str, model_id: str, preset: str) -> Iterator[tuple]:
        """Train in a worker thread and show each step with its loss until it ends, fails or is cancelled."""
        from .studio import TrainWatch

        if not upload:
            yield _bar(None), "Error: upload a photo first"
            return
        if preset not in PRESETS:
            yield _bar(None), f"Error: pick one of the schedules ({', '.join(PRESETS)})"
            return
        watch, outcome = TrainWatch(), {}
        warnings: list[str] = []
        recipe: list[str] = []

        def work() -> None:
            try:
                outcome["profile"] = self.studio().train(name.strip(), upload, prompt, model_id, PRESETS[preset], watch,
                                                         warnings.append, recipe.append)
            except BaseException as ex:  # reported on the page by the loop below
                outcome["error"] = ex

        thread = threading.Thread(target=work, name="imagic-lora-train", daemon=True)
        self._training.update(watch=watch, thread=thread)
        thread.start()
        yield _bar(None), "Loading the model..."
        while thread.is_alive():
            thread.join(0.3)
            yield _bar(watch.step), " ".join([_step_line(watch.step), *(f"({line})" for line in recipe)])
        if "error" in outcome:
            yield _bar(watch.step), said(outcome["error"])
            return
        losses = outcome["profile"].metadata.losses
        note = "".join(f" Warning: {w}" for w in warnings)
        yield _bar(watch.step), (f"Saved profile {name.strip()!r} (embedding loss {_loss(losses.embedding)}, "
                                 f"LoRA loss {_loss(losses.lora)}). Open the Edit tab to use it.{note}")

    def cancel(self) -> str:
        """Stop the running training at its next step and wait for it: nothing of it is stored."""
        watch, thread = self._training.get("watch"), self._training.get("thread")
        if watch is None or thread is None or not thread.is_alive():
            return "No training is running."
        watch.cancelled.set()
        thread.join(60)
        if thread.is_alive():  # still loading the model: it stops at its first step
            return "Cancelling: the training stops at its next step; nothing of it will be stored"
        return "Error: training cancelled; nothing was stored"

    # editing

    def edit(self, name: str | None, prompt: str, alpha: float, sweep: bool, sweep_from: float, sweep_to: float,
             sweep_count: int, guidance: str, start: str, keep: bool, steps: int, seed: int) -> tuple:
        """The edit beside the photo, the sweep as a strip, the PNG to download, and a status line."""
        from ..config import ApplyConfig

        try:
            alphas = _sweep(sweep_from, sweep_to, sweep_count) if sweep else [alpha]
            config = ApplyConfig(guidance=_guidance(guidance), start=start, keep=keep,
                                 steps=int(_number(steps, "steps")), seed=int(_number(seed, "seed")))
            result = self.studio().edit(_required(name), prompt, alphas, config)
        except Exception as ex:
            return None, gr.update(value=None, visible=False), gr.update(value=None, visible=False), said(ex)
        after = result.images[-1]
        strip = [(str(path), f"α {a:g}") for path, a in zip(result.images, alphas, strict=True)]
        note = "".join(f" Warning: {w}" for w in result.warnings)
        return ((result.before, str(after)), gr.update(value=strip, visible=len(strip) > 1),
                gr.update(value=str(after), visible=True, label=f"Download {after.name}"),
                f"Edited {name!r} toward {prompt!r} at α {', '.join(f'{a:g}' for a in alphas)}.{note}")


def _required(name: str | None) -> str:
    if not name:
        raise InvalidConfig("pick a profile first. Try: the Train tab, or importing a profile file")
    return name


def _guidance(value: str | float | None) -> float | None:
    """The guidance field: empty for the base model's own default, else a number (a number field cannot be
    empty: it sends 0, which is a guidance of its own)."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidConfig(f"guidance must be a number or empty (the model's own), got {text!r}") from None


def _number(value: float | None, what: str) -> float:
    """A number field's value; an emptied field is refused in one line."""
    if value is None:
        raise InvalidConfig(f"{what} is empty. Try: a number")
    return value


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _sweep(first: float, last: float, count: int) -> list[float]:
    count = int(_number(count, "the sweep's images"))
    first, last = _number(first, "the sweep's first α"), _number(last, "the sweep's last α")
    if not 2 <= count <= 16:
        raise InvalidConfig(f"a sweep has 2 to 16 images, got {count}")
    return [round(first + (last - first) * i / (count - 1), 4) for i in range(count)]


def _step_line(step) -> str:
    if step is None:
        return "Loading the model..."
    loss = f", loss {step.loss:.4f}" if step.loss is not None else ""
    return f"{step.stage}: step {step.done} of {step.total}{loss}"


def _bar(step) -> str:
    done, total = (step.done, step.total) if step else (0, 1)
    label = _one_line(_step_line(step)) if step else ""
    return f'<progress value="{done}" max="{total}" style="width:100%"></progress><div>{label}</div>'
