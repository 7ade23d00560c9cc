"""Where long work reports its steps beside its terminal progress bars: a listener that may also stop it.

The CLI needs none (tqdm draws its bars); the web app listens to show a live bar with the loss, and raises
:class:`Cancelled` from its listener to stop a training between two steps. The listener is a context
variable, so each request's thread hears only its own work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import ImagicError


class Cancelled(ImagicError):
    """The user stopped the work; nothing was stored."""


@dataclass(frozen=True)
class Step:
    """``done`` of ``total`` steps of ``stage`` are finished; ``loss`` is the last step's, when it has one."""

    stage: str
    done: int
    total: int
    loss: float | None = None


Listener = Callable[[Step], None]
_listener: ContextVar[Listener | None] = ContextVar("imagic_lora_progress_listener", default=None)


def report(stage: str, done: int, total: int, loss: float | None = None) -> None:
    """Tell the listener of this context, if any, that a step has finished; it may raise :class:`Cancelled`."""
    listener = _listener.get()
    if listener is not None:
        listener(Step(stage, done, total, loss))


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every :func:`report` made inside the block, in this context, to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
