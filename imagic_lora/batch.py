"""Many profiles in one run: rows of (name, image, prompt) from CSV or JSON Lines, split over processes.

Under ``accelerate launch`` each process takes its share of the rows (accelerate's
``split_between_processes``), loads the model once and trains its rows on its own device. A row
whose profile already exists with the same image and settings is skipped, so a re-run after a
crash finishes only what is missing; a failing row is reported and the batch goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .errors import ImagicError, InvalidConfig, ModelLoadError, OutputError, ReportedElsewhere
from .files import read_text
from .limits import MAX_BATCH_ROWS
from .record import ProfileMetadata, Recipe, Settings
from .text import text_lines
from .validate import PROFILE_SUFFIX

COLUMNS = ("name", "image", "prompt")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass(frozen=True)
class BatchRow:
    """One requested profile; ``problem`` says why the row cannot be trained as written."""

    number: int  # as a spreadsheet numbers it (CSV, the header is row 1), or its line (JSON Lines)
    name: str
    image: Path
    prompt: str
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"row {self.number} ({self.name})" if self.name else f"row {self.number}"


@dataclass(frozen=True)
class RowResult:
    number: int
    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0


@dataclass
class BatchSummary:
    results: list[RowResult] = field(default_factory=list)
    processes: int = 1

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def failed(self) -> list[RowResult]:
        return [result for result in self.results if result.status == FAILED]

    def line(self) -> str:
        processes = f" on {self.processes} processes" if self.processes > 1 else ""
        return (f"{len(self.results)} rows{processes}: {self.count(DONE)} done, {self.count(SKIPPED)} skipped, "
                f"{self.count(FAILED)} failed")


# --- reading the batch file -------------------------------------------------------------------------------

def read_batch(path: str | Path) -> list[BatchRow]:
    """The rows of a CSV (header ``name,image,prompt``) or JSON Lines batch file.

    A file that cannot be read at all raises :class:`InvalidConfig`; a bad row is returned with its
    ``problem`` so that the others still run. Image paths are relative to the batch file's folder.
    """
    path = Path(path)
    text = _read_text(path)
    rows = _jsonl_rows(text, path) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv_rows(text, path)
    if not rows:
        raise InvalidConfig(f"batch file {path} has no rows. Try: one line per profile: name,image,prompt")
    if len(rows) > MAX_BATCH_ROWS:
        raise InvalidConfig(f"batch file {path} has {len(rows)} rows, over the limit of {MAX_BATCH_ROWS}. "
                            "Try: splitting it")
    return _mark_duplicates([_checked(row, path.parent) for row in rows])


def _read_text(path: Path) -> str:
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise InvalidConfig(f"batch file {str(path)!r} must be .csv or .jsonl. Try: a CSV with the header "
                            "name,image,prompt, or one JSON object per line")
    return read_text(path, "batch file", "a CSV with the header name,image,prompt")


def _csv_rows(text: str, path: Path) -> list[BatchRow]:
    try:
        records = list(csv.reader(line + "\n" for line in text_lines(text)))
    except csv.Error as ex:
        raise InvalidConfig(f"batch file {path} is not valid CSV ({ex}). "
                            "Try: quoting fields that hold commas") from None
    records = [(number, record) for number, record in enumerate(records, start=1) if any(f.strip() for f in record)]
    if not records:
        return []
    header = [field.strip().lower() for field in records[0][1]]
    _check_columns(header, path)
    rows = []
    for number, record in records[1:]:
        if len(record) != len(header):
            rows.append(BatchRow(number, "", Path(), "", f"has {len(record)} fields, the header {len(header)}"))
            continue
        values = dict(zip(header, record, strict=True))
        rows.append(BatchRow(number, values["name"].strip(), Path(values["image"].strip()), values["prompt"].strip()))
    return rows


def _check_columns(columns: list[str], path: Path) -> None:
    missing = [c for c in COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in COLUMNS]
    if missing or unknown or len(set(columns)) != len(columns):
        found = ",".join(columns) or "nothing"
        raise InvalidConfig(f"batch file {path} has the columns {found}; it needs exactly name,image,prompt "
                            f"(in any order). Try: a first line 'name,image,prompt'")


def _jsonl_rows(text: str, path: Path) -> list[BatchRow]:
    rows = []
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            rows.append(BatchRow(number, "", Path(), "", "is not a JSON object"))
            continue
        if not isinstance(record, dict) or set(record) != set(COLUMNS) or not all(
                isinstance(record[c], str) for c in COLUMNS):
            rows.append(BatchRow(number, "", Path(), "",
                                 'needs exactly the keys "name", "image" and "prompt", each a string'))
            continue
        rows.append(BatchRow(number, record["name"].strip(), Path(record["image"].strip()), record["prompt"].strip()))
    return rows


def _checked(row: BatchRow, folder: Path) -> BatchRow:
    """The row with its image path resolved against the batch file's folder, and its first problem named."""
    if row.problem:
        return row
    image = row.image if row.image.is_absolute() else folder / row.image
    from .api import check_request

    problem = None
    try:
        check_request(row.name, row.prompt)
    except ImagicError as ex:
        problem = str(ex)
    if not str(row.image) or str(row.image) == ".":
        problem = problem or "has no image path"
    return BatchRow(row.number, row.name, image, row.prompt, problem)


def _mark_duplicates(rows: list[BatchRow]) -> list[BatchRow]:
    first: dict[str, int] = {}
    marked = []
    for row in rows:
        if row.problem is None and row.name in first:
            row = BatchRow(row.number, row.name, row.image, row.prompt,
                           f"uses the name {row.name!r} of row {first[row.name]}; names must be unique")
        first.setdefault(row.name, row.number)
        marked.append(row)
    return marked


# --- where finished profiles go ---------------------------------------------------------------------------

class StoreTarget:
    """Profiles go into the SQLite store (safe for concurrent writers on one machine)."""

    def __init__(self, store) -> None:
        self.store = store

    def existing_metadata(self, name: str) -> ProfileMetadata | None:
        return self.store.info(name)["metadata"] if self.store.exists(name) else None

    def save(self, profile, replace: bool) -> str:
        from .api import save_or_rescue

        save_or_rescue(self.store, profile, replace)
        return f"stored in {self.store.path}"


class UnreadableExisting(ImagicError):
    """A file stands where a row's profile file goes, and it is not a profile this version can read."""


class FolderTarget:
    """One profile file per row, written atomically (temp file + rename): for shared file systems.

    What it may replace: a readable profile file of the same name, only with ``--replace`` (or when it
    records the same image and settings, which skips the row); any other file there (unreadable, of a
    newer format, not a profile) only with ``--replace``. A profile it cannot write is rescued.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{PROFILE_SUFFIX}"

    def existing_metadata(self, name: str) -> ProfileMetadata | None:
        """The metadata of the file already there, None if there is none; :class:`UnreadableExisting` if
        something is there that is not a readable profile."""
        from .store import read_profile_file

        path = self.path(name)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            profile = read_profile_file(path)
        except ImagicError as ex:
            raise UnreadableExisting(f"{path} exists and is not a profile this version can read ({ex})") from None
        if profile.name != name:
            raise UnreadableExisting(f"{path} exists and holds the profile {profile.name!r}, not {name!r}")
        return profile.metadata

    def save(self, profile, replace: bool) -> str:
        """Write the profile's file; without ``replace``, a file made meanwhile stays. Rescued if not written."""
        from .api import saved_or_rescued
        from .files import atomic_write

        def write() -> str:
            try:
                return f"written to {atomic_write(self.path(profile.name), profile.to_bytes(), replace)}"
            except FileExistsError as ex:
                raise OutputError(f"{ex.filename} appeared while training; it was left alone") from None

        return saved_or_rescued(profile, write)


# --- running it -------------------------------------------------------------------------------------------

@dataclass
class BatchJob:
    """Everything one process needs to run its rows."""

    model: str | None
    config: TrainConfig
    device: str | None = None
    dtype: str | None = None
    replace: bool = False
    progress: bool = True  # the batch's bar; the row's stage bars too when ``row_progress``
    row_progress: bool = True
    description: str = "batch"
    report: Callable[[str], None] = print


def run_rows(rows: list[BatchRow], job: BatchJob, target, base) -> list[RowResult]:
    """Train ``rows`` in order with the loaded model ``base``; never raises for a row."""
    from tqdm.auto import tqdm

    from .api import training_settings
    from .recipe import resolve

    # one recipe for the whole run, chosen before any row trains, so every row records the same settings
    settings = job.config.for_model(base.default_guidance)  # the inversion's guidance, the model's default
    config, recipe = resolve(settings, base, settings.resolution or base.native_resolution)
    job.report(recipe.line())
    job = dataclasses.replace(job, config=config)
    # the settings an existing profile must record to be skipped: fingerprinting walks every weight, so once
    expected = functools.cache(lambda: training_settings(base, base.fingerprint(), job.config))
    results = []
    for row in tqdm(rows, desc=job.description, unit="row", disable=not job.progress, dynamic_ncols=True):
        start = time.perf_counter()
        try:
            status, reason = _run_row(row, job, target, base, expected, recipe)
        except ImagicError as ex:
            status, reason = FAILED, str(ex)
        except Exception as ex:  # one row's unexpected failure (out of memory, a broken file) stops only that row
            status, reason = FAILED, f"unexpected {type(ex).__name__}: {ex}"
        result = RowResult(row.number, row.name, status, reason, round(time.perf_counter() - start, 2))
        job.report(_row_line(row, result))
        results.append(result)
    return results


def _row_line(row: BatchRow, result: RowResult) -> str:
    if result.status == FAILED:
        return f"Failed: {row.label}: {result.reason}"
    if result.status == SKIPPED:
        return f"Skipped: {row.label}: {result.reason}"
    return f"Done: {row.label} in {result.seconds:.1f} s, {result.reason}"


def _run_row(row: BatchRow, job: BatchJob, target, base, expected: Callable[[], Settings],
             recipe: Recipe) -> tuple[str, str]:
    """(status, reason): the row trained and saved, or skipped as already done."""
    from .api import make_profile, stored_inversion
    from .images import file_sha256, load_image

    if row.problem:
        return FAILED, row.problem
    warnings: list[str] = []
    picture = load_image(row.image, warnings.append)
    image_sha256 = file_sha256(row.image)
    try:
        existing = target.existing_metadata(row.name)
        occupied = existing is not None
    except UnreadableExisting as ex:
        if not job.replace:
            return FAILED, f"{ex}; it was left alone. Try: --replace to overwrite it, or moving it away"
        existing, occupied = None, True
    if existing is not None:
        if existing.trained_like(expected(), stored_inversion(job.config), image_sha256):
            return SKIPPED, "already trained from this image with these settings"
        if not job.replace:
            return FAILED, (f"profile {row.name!r} exists, made from another image or with other settings. "
                            "Try: --replace, or another name")
    profile = make_profile(row.name, picture, image_sha256, row.prompt, base, job.config,
                           progress=job.progress and job.row_progress, warn=warnings.append, recipe=recipe)
    where = target.save(profile, replace=occupied)
    for warning in warnings:
        job.report(f"Warning: {row.label}: {warning}")
    return DONE, where


def secondary_process() -> bool:
    """Whether this is a process other than the first of a multi-process launch (torchrun sets ``RANK``)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def _model_for_every_process(rows: list[BatchRow], job: BatchJob, state):
    """The model, loaded before the first row; if any process cannot load it, the main process says why,
    once, and every process stops."""
    from .models import load_model

    base, problem = None, None
    if rows:
        try:
            base = load_model(job.model, job.device, job.dtype)
        except ImagicError as ex:
            problem = str(ex)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        problem = next((p for p in gather_object([problem]) if p), None)
    if problem and not state.is_main_process:
        raise ReportedElsewhere(problem)
    if problem:
        raise ModelLoadError(problem)
    return base


def run_batch(rows: list[BatchRow], job: BatchJob, target) -> tuple[BatchSummary, bool]:
    """This process's share of ``rows`` (split by accelerate's rank rule), then every process's results.

    Returns the summary of the whole batch and whether this is the main process (the one that reports it).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # on a machine without CUDA, processes started by `accelerate launch` talk over gloo on the CPU
    state = PartialState(cpu=job.device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1:
        if job.device in (None, "auto", "cuda"):  # one device per process, not all on the first
            job.device = "cpu" if state.device.type == "cpu" else str(state.device)
        job.description = f"batch, process {state.process_index + 1}/{state.num_processes}"
        job.row_progress = False  # stage bars of several processes would overwrite each other
    with state.split_between_processes(rows) as mine:
        mine = list(mine)
    base = _model_for_every_process(mine, job, state)
    results = run_rows(mine, job, target, base)
    if state.num_processes > 1:
        results = gather_object(results)
    results = sorted({r.number: r for r in results}.values(), key=lambda r: r.number)
    return BatchSummary(results, state.num_processes), state.is_main_process
