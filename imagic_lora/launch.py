"""``imagic-lora launch``: accelerate's launcher run in this process, so a failed batch ends in our one line.

``accelerate launch`` re-raises a failed worker as a ``ChildFailedError`` traceback after the batch has
already said what failed. Here the same launcher (the same options, parsed by accelerate itself) runs
inside imagic-lora: the workers print their lines as before, and a failure becomes the exit code alone.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator, Sequence

from .errors import InvalidConfig

LAUNCHABLE = ("train-batch",)
QUIET_LOGGERS = ("torch.distributed.elastic", "torch.distributed.run", "accelerate")


def split_command(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(accelerate's options, the imagic-lora command)``, split at the command's name."""
    for index, arg in enumerate(args):
        if arg in LAUNCHABLE:
            return list(args[:index]), list(args[index:])
    raise InvalidConfig("launch needs the command to run after accelerate's options. Try: imagic-lora launch "
                        "--multi_gpu --num_processes 2 train-batch photos.csv")


def launch(args: Sequence[str]) -> int:
    """Run ``imagic-lora COMMAND`` under accelerate's launcher with its ``OPTIONS``; the exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    options, command = split_command(args)
    parsed = launch_command_parser().parse_args([*options, "-m", "imagic_lora.cli", *command])
    with _quiet_loggers():
        try:
            launch_command(parsed)
        except subprocess.CalledProcessError as ex:  # one process: its own lines said why
            return ex.returncode or 1
        except Exception:  # torch's ChildFailedError: a worker exited non-zero after saying why
            return 1
    return 0


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The launcher's own reports of a failed worker (its exit code, its pid) repeat what the worker said."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
