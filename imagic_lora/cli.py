"""The ``imagic-lora`` command: parses options, calls one library function, prints the result."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import warnings
from dataclasses import fields

import click

from .config import FITS, MEMORY_MODES, OPTIMIZERS, STARTS, ApplyConfig, TrainConfig
from .crash import crash_message
from .errors import ImagicError, ReportedElsewhere
from .families import BENCH_FAMILIES
from .paths import default_model, store_path
from .store import ProfileStore, read_profile_file, stored_metadata
from .text import escape_controls

DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
LORA_FORMATS = ("diffusers", "kohya")  # imagic_lora.interop.LORA_FORMATS, without importing diffusers here


def _default(cls, name: str):
    return {f.name: f.default for f in fields(cls)}[name]


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bars and errors: silence library chatter."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub.*")  # its deprecations
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def user_errors(func):
    """Turn the library's typed errors into one ``Error: ...`` line and exit code 1.

    Anything unexpected also gives one line, pointing to a log file that holds the traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ReportedElsewhere:
            raise click.exceptions.Exit(1) from None
        except ImagicError as ex:
            raise click.ClickException(str(ex)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):  # click ends a broken pipe
            raise
        except Exception as ex:  # the last line of defence: no traceback reaches the user
            raise click.ClickException(crash_message(ex)) from None

    return wrapper


def complete_profile_names(ctx, param, incomplete: str) -> list:
    """Shell completion: stored profile names starting with what has been typed."""
    try:
        return ProfileStore().names(incomplete)
    except ImagicError:
        return []


def model_options(func):
    func = click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
                        help="Dtype of the frozen weights (auto: fp16 on CUDA, fp32 on CPU).")(func)
    func = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(func)
    return func


def echo(text: object, err: bool = False) -> None:
    """One line of text that may hold outside text (names, prompts, paths), escaped for the terminal."""
    click.echo(escape_controls(text), err=err)


@contextlib.contextmanager
def _escaped_errors():
    try:
        yield
    except click.ClickException as ex:  # ours and click's own (a file name in a usage error)
        ex.message = escape_controls(ex.message)
        raise


class EscapingGroup(click.Group):
    """Every ``Error:`` line, click's usage errors included, goes out with outside text escaped."""

    def make_context(self, *args, **kwargs):
        with _escaped_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _escaped_errors():
            return super().invoke(ctx)


@click.group(cls=EscapingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imagic-lora")
def cli() -> None:
    """Edit real photos from one sentence with Imagic + LoRA, keeping each image's edit profile."""
    _quiet_libraries()


def training_options(func):
    """The options of both training commands: model, the two stages' settings, memory switches."""
    options = [
        click.option("--model", default=None, help="SD 1.x, 2.x or SDXL: hub id, diffusers folder, .safetensors "
                     "file, or builtin:tiny / builtin:tiny-xl "
                     "[default: $IMAGIC_LORA_MODEL or stable-diffusion-v1-5/stable-diffusion-v1-5]."),
        click.option("--embedding-steps", type=int, default=_default(TrainConfig, "embedding_steps"), show_default=True,
                     help="Stage 1: Adam steps fitting the text embedding to the image."),
        click.option("--embedding-lr", type=float, default=_default(TrainConfig, "embedding_lr"), show_default=True),
        click.option("--lora-steps", type=int, default=_default(TrainConfig, "lora_steps"), show_default=True,
                     help="Stage 2: steps training the LoRA adapter."),
        click.option("--lora-lr", type=float, default=_default(TrainConfig, "lora_lr"), show_default=True),
        click.option("--rank", type=int, default=_default(TrainConfig, "rank"), show_default=True, help="LoRA rank."),
        click.option("--lora-alpha", type=float, default=_default(TrainConfig, "lora_alpha"), show_default=True,
                     help="LoRA scale numerator (scale = alpha / rank)."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
                     help="Stage 2 optimizer: bitsandbytes 8-bit AdamW or torch AdamW [default: --memory "
                     "decides]."),
        click.option("--resolution", type=int, default=None, help="Training size in pixels [default: the model's]."),
        click.option("--fit", type=click.Choice(FITS), default=_default(TrainConfig, "fit"), show_default=True,
                     help="Make a non-square image square by center-cropping or padding."),
        click.option("--seed", type=int, default=_default(TrainConfig, "seed"), show_default=True,
                     help="Seed of the timesteps and noise drawn in training."),
        click.option("--samples-per-step", type=int, default=_default(TrainConfig, "samples_per_step"),
                     show_default=True, help="Noise samples (timesteps) batched into each training step."),
        click.option("--inversion-steps", type=int, default=_default(TrainConfig, "inversion_steps"),
                     show_default=True, help="Sampling steps of the photo's edit-friendly inversion kept in the "
                     "profile: apply with as many --steps starts from it at no cost; other step counts invert "
                     "again."),
        click.option("--inversion-guidance", type=float, default=None,
                     help="The guidance the kept inversion is made for: apply at this --guidance starts from it "
                     "at no cost; another guidance inverts again [default: the base model's default guidance, "
                     "as apply's]."),
        click.option("--memory", type=click.Choice(MEMORY_MODES), default=_default(TrainConfig, "memory"),
                     show_default=True, help="Which memory savings training pays for in time: auto picks the "
                     "fastest recipe whose estimate fits the GPU's free memory (the CPU keeps its own); low: all "
                     "of them (an 8 GB card); high: none. The three flags below override it; the choice is "
                     "printed and kept in the profile."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
                     help="Recompute UNet activations in backward to save memory [default: --memory decides]."),
        click.option("--offload-encoders/--no-offload-encoders", default=None,
                     help="Move the VAE and text encoders off the GPU while training [default: --memory "
                     "decides]."),
    ]
    func = model_options(func)
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("name")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--prompt", required=True, help="What the image shows as it is, e.g. 'a photo of a dog'.")
@click.option("--replace", is_flag=True, help="Overwrite an existing profile of that name.")
@training_options
@user_errors
def train(name, image, prompt, model, replace, device, dtype, **settings) -> None:
    """Train the edit profile NAME from IMAGE (Imagic stages 1 and 2)."""
    from .api import train as train_profile

    profile = train_profile(name, image, prompt, model=model, config=TrainConfig(**settings),
                            device=device, dtype=dtype, replace=replace, warn=_warn, inform=_tqdm_echo)
    losses = profile.metadata.losses
    echo(f"Saved profile {profile.name!r} (embedding loss {_fmt(losses.embedding)}, "
         f"LoRA loss {_fmt(losses.lora)}). Try: imagic-lora apply profile {profile.name} \"...\"")


@cli.command(name="train-batch")
@click.argument("batch_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write one profile file per row here (atomically) instead of into the store: for several "
              "machines sharing a network folder. Then: imagic-lora profiles import DIR.")
@click.option("--replace", is_flag=True,
              help="Retrain rows whose profile exists from another image or with other settings.")
@training_options
@user_errors
def train_batch(batch_file, out_dir, replace, model, device, dtype, **settings) -> None:
    """Train one profile per row of FILE: CSV with the header name,image,prompt, or JSON Lines.

    Rows already trained from the same image with the same settings are skipped, so running the
    same command again after a crash finishes only what is missing. Under `accelerate launch` the
    rows are split over the processes; the model is loaded once per process.
    """
    from pathlib import Path

    from .batch import BatchJob, FolderTarget, StoreTarget, read_batch, run_batch, secondary_process
    from .files import check_folder

    try:  # the same check fails in every process of a launch: the first one says so
        config = TrainConfig(**settings)
        rows = read_batch(batch_file)
        target = FolderTarget(check_folder(out_dir, "--out-dir")) if out_dir else StoreTarget(ProfileStore())
    except ImagicError as ex:
        if secondary_process():
            raise ReportedElsewhere(str(ex)) from None
        raise
    report = _tqdm_echo
    job = BatchJob(model, config, device=device, dtype=dtype, replace=replace, report=report)
    summary, main_process = run_batch(rows, job, target)
    if not main_process:  # the main process reports the whole batch, and its exit code says if a row failed
        return
    echo(f"Batch {Path(batch_file).name}: {summary.line()}")
    if summary.failed:
        numbers = ", ".join(str(r.number) for r in summary.failed[:10]) + (" ..." if len(summary.failed) > 10 else "")
        rows = "row" if len(summary.failed) == 1 else "rows"
        raise click.ClickException(f"{len(summary.failed)} of {len(summary.results)} rows failed ({rows} {numbers}; "
                                   "reasons above). Try: fixing them and running the same command again: "
                                   "finished rows are skipped")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@user_errors
def launch(args) -> None:
    """Run train-batch on several processes or machines: accelerate launch's options, then the command.

    \b
    imagic-lora launch --multi_gpu --num_processes 4 train-batch photos.csv
    imagic-lora launch --multi_gpu --num_machines 2 --machine_rank R --main_process_ip HOST \\
        --num_processes 8 train-batch photos.csv --out-dir /shared/profiles

    The same as `accelerate launch ... -m imagic_lora.cli train-batch ...`, except that a failed row
    ends with the batch's own Error line and exit code 1, not with accelerate's traceback.
    """
    from .launch import launch as run_launch

    code = run_launch(args)
    if code:
        raise click.exceptions.Exit(code)


def _tqdm_echo(line: str) -> None:
    """A line on stderr that does not break the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(escape_controls(line), file=sys.stderr)


def _warn(message: str) -> None:
    echo(f"Warning: {message}", err=True)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def apply_options(func):
    options = [
        click.option("--alpha", "alphas", type=float, multiple=True, help="Interpolation weight toward the new "
                     f"prompt; repeat for several [default: {_default(ApplyConfig, 'alphas')[0]}]."),
        click.option("--seeds", type=int, default=_default(ApplyConfig, "seeds"), show_default=True,
                     help="How many seeds per alpha (with --start noise; an inversion start has no seed)."),
        click.option("--seed", type=int, default=_default(ApplyConfig, "seed"), show_default=True,
                     help="First seed."),
        click.option("--steps", type=int, default=_default(ApplyConfig, "steps"), show_default=True,
                     help="DDIM sampling steps."),
        click.option("--guidance", type=float, default=None,
                     help="Classifier-free guidance scale [default: the base model's: 7.5 for SD 1.x/2.x, 5 for "
                     "SDXL (their pipelines' own), 2 for the built-in models (tuned on them)]."),
        click.option("--negative-prompt", default=_default(ApplyConfig, "negative_prompt"),
                     help="What to steer away from."),
        click.option("--start", type=click.Choice(STARTS), default=_default(ApplyConfig, "start"), show_default=True,
                     help="Sample from the photo's edit-friendly inversion stored in the profile (gives the "
                     "photo back at alpha 0 at any guidance; deterministic, so one seed), from its DDIM inversion "
                     "(what profiles before format version 4 store; exact only at low guidance), or from seeded "
                     "noise (--seeds gives variations)."),
        click.option("--keep/--no-keep", default=_default(ApplyConfig, "keep"), show_default=True,
                     help="Put the photo's own pixels (its stored latents, decoded) back where the edit left it "
                     "alone. The model's own reading of the prompt (where it changes its prediction for the photo) "
                     "says where the edit acts: a local edit is kept there and wherever it changed the photo, the "
                     "rest is the photo exactly, the kept part shifted by the sampler's colour drift; an edit of "
                     "the whole picture (a tint, another background, a style) is kept whole, with only the photo's "
                     "lost details put back through its colour change. Turn it off when a change you asked for "
                     "comes back partly undone, or to see the raw sample."),
        click.option("--keep-threshold", type=float, default=_default(ApplyConfig, "keep_threshold"),
                     show_default=True, help="How much (0-1 of full scale, on a blurred difference) a region "
                     "must change to count as edited; lower keeps less of the photo."),
        click.option("--batch-size", type=int, default=_default(ApplyConfig, "batch_size"), show_default=True,
                     help="Images generated together."),
        click.option("--memory", type=click.Choice(MEMORY_MODES), default=_default(ApplyConfig, "memory"),
                     show_default=True, help="low: decode each image with the UNet off the GPU, so the command "
                     "peaks no higher than sampling (an 8 GB card with SDXL); auto: low when the estimate for "
                     "everything resident exceeds the GPU's free memory; high: never."),
        click.option("--grid/--no-grid", default=_default(ApplyConfig, "grid"), show_default=True,
                     help="Also write a labelled grid when several images are made."),
        click.option("--out", type=click.Path(), default=".", show_default=True,
                     help="Folder for the PNGs."),
        click.option("--model", default=None, help="Base model [default: the one the profile was made with]."),
        click.option("--force", is_flag=True, help="Apply even if the base model's weights differ."),
        click.option("--prompts-file", type=click.Path(dir_okay=False), default=None,
                     help="Edit toward every prompt in this text file (one per line, # for comments), "
                     "loading the model once."),
    ]
    func = model_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def _run_apply(profile, prompt, prompts_file, out, model, device, dtype, force, **settings) -> None:
    from .api import apply_prompts, read_prompts

    config = ApplyConfig(**settings)
    if prompt is None and prompts_file is None:
        raise click.ClickException("give an edit PROMPT or --prompts-file. Try: imagic-lora apply profile "
                                   "NAME \"a jumping dog\"")
    prompts = ([prompt] if prompt is not None else []) + (read_prompts(prompts_file) if prompts_file else [])
    apply_prompts(profile, prompts, out_dir=out, model=model, config=config, device=device, dtype=dtype,
                  force=force, warn=_warn, written=echo, inform=_tqdm_echo)


@cli.group()
def apply() -> None:
    """Edit with a profile toward a new prompt (Imagic stage 3)."""


@apply.command(name="profile")
@click.argument("name", shell_complete=complete_profile_names)
@click.argument("prompt", required=False)
@apply_options
@user_errors
def apply_stored(name, prompt, **options) -> None:
    """Apply the stored profile NAME to PROMPT (or to each prompt of --prompts-file)."""
    _run_apply(ProfileStore().get(name), prompt, **options)


@apply.command(name="file")
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("prompt", required=False)
@apply_options
@user_errors
def apply_file(path, prompt, **options) -> None:
    """Apply the shared profile file PATH to PROMPT (or --prompts-file) without importing it."""
    _run_apply(read_profile_file(path), prompt, **options)


@cli.group()
def profiles() -> None:
    """List, inspect, share and manage stored profiles."""


@profiles.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def profiles_list(as_json) -> None:
    """List stored profiles."""
    store = ProfileStore()
    rows = store.list() if as_json else store.list(LISTED)
    if as_json:
        for row in rows:
            try:
                row["metadata"] = stored_metadata(row).to_dict()
            except ImagicError as ex:
                row["metadata"], row["problem"] = None, str(ex)
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No profiles yet. Try: imagic-lora train NAME IMAGE --prompt \"a photo of ...\"")
    lines = []
    for row in rows:
        size = f"{row['size_bytes'] / 1024:.0f} KiB" if isinstance(row["size_bytes"], int) else "? KiB"
        lines.append(escape_controls(f"{row['name']}: \"{row['source_prompt']}\"  {row['base_model']}  "
                           f"{row['resolution']}px  {size}  {row['created_at']}"))
    if lines:
        click.echo("\n".join(lines))


LISTED = ("name", "source_prompt", "base_model", "resolution", "size_bytes", "created_at")


@profiles.command(name="show")
@click.argument("name", shell_complete=complete_profile_names)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def profiles_show(name, as_json) -> None:
    """Show a profile's metadata."""
    info = ProfileStore().info(name)
    info["metadata"] = info["metadata"].to_dict()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    meta = info.pop("metadata")
    for key, value in {**info, **meta}.items():
        if key not in ("format_version",) or value is not None:
            echo(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


@profiles.command(name="rm")
@click.argument("name", shell_complete=complete_profile_names)
@user_errors
def profiles_rm(name) -> None:
    """Delete a profile."""
    ProfileStore().remove(name)
    echo(f"Removed profile {name!r}")


@profiles.command(name="rename")
@click.argument("old", shell_complete=complete_profile_names)
@click.argument("new")
@user_errors
def profiles_rename(old, new) -> None:
    """Rename profile OLD to NEW."""
    ProfileStore().rename(old, new)
    echo(f"Renamed profile {old!r} to {new!r}")


@profiles.command(name="path")
@user_errors
def profiles_path() -> None:
    """Print where the profile database lives (without opening it, so a damaged store can be found)."""
    echo(store_path())


@profiles.command(name="export")
@click.argument("name", shell_complete=complete_profile_names)
@click.argument("path", type=click.Path())
@click.option("--lora-only", is_flag=True, help="Write only the LoRA adapter, for other Stable Diffusion tools.")
@click.option("--format", "lora_format", type=click.Choice(LORA_FORMATS), default=None,
              help="Adapter key naming (implies --lora-only): diffusers load_lora_weights, or kohya for "
              "A1111/ComfyUI.  [default: diffusers]")
@user_errors
def profiles_export(name, path, lora_only, lora_format) -> None:
    """Write profile NAME to one shareable .safetensors file (or its adapter alone)."""
    store = ProfileStore()
    store.check_not_store(path)
    if lora_only or lora_format:
        from .interop import export_lora

        echo(str(export_lora(store.get(name), path, lora_format or "diffusers")))
        return
    echo(store.export(name, path))


@profiles.command(name="import")
@click.argument("path", type=click.Path())
@click.option("--name", default=None, help="Store it under this name instead of the file's (one file only).")
@click.option("--replace", is_flag=True, help="Overwrite an existing profile of that name.")
@user_errors
def profiles_import(path, name, replace) -> None:
    """Validate a shared profile file, or every .safetensors file in a folder, and add it to the store."""
    from pathlib import Path

    if not Path(path).is_dir():
        profile = ProfileStore().import_file(path, name=name, replace=replace)
        echo(f"Imported profile {profile.name!r}")
        return
    if name is not None:
        raise click.ClickException("--name renames one file, not a folder. Try: importing that file alone")
    outcomes = ProfileStore().import_folder(path, replace=replace)
    for file, status, detail in outcomes:
        echo(f"{status.capitalize()}: {file.name}: {detail}", err=status == "refused")
    counts = {s: sum(o[1] == s for o in outcomes) for s in ("imported", "skipped", "refused")}
    click.echo(f"{len(outcomes)} files: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["refused"]:
        raise click.ClickException(f"{counts['refused']} file(s) refused (reasons above); the others were imported")


@profiles.command(name="verify")
@user_errors
def profiles_verify() -> None:
    """Check the database's integrity and every profile's checksum."""
    count, problems = ProfileStore().verify()
    for problem in problems:
        echo(f"Problem: {problem}", err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {ProfileStore().path}. "
                                   "Try: imagic-lora profiles backup to save what is readable")
    click.echo(f"OK: integrity check passed, {count} profile(s) verified")


@profiles.command(name="backup")
@click.argument("path", type=click.Path())
@click.option("--replace", is_flag=True, help="Overwrite PATH if it exists.")
@user_errors
def profiles_backup(path, replace) -> None:
    """Copy the whole store to PATH, consistently, even while it is in use."""
    echo(str(ProfileStore().backup(path, replace=replace)))


@cli.command()
@click.option("--model", "models", multiple=True, help="A base model the app serves (repeat for several): "
              "hub id, diffusers folder, .safetensors file or builtin:shapes. Only these are loaded, each once "
              "[default: $IMAGIC_LORA_MODEL or stable-diffusion-v1-5/stable-diffusion-v1-5].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but localhost lets other machines in (a warning says so).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--share", is_flag=True, help="Also open a public Gradio share link (off unless asked).")
@model_options
@user_errors
def ui(models, host, port, share, device, dtype) -> None:
    """Start the local web app: train, browse, share and edit in the browser."""
    try:
        from .ui.app import serve
    except ImportError as ex:
        raise click.ClickException(f"the web app needs Gradio ({ex.name} is missing). "
                                   "Try: pip install 'imagic-lora[ui]'") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        _warn(f"listening on {host}: anyone who can reach this machine can use the app and its profiles")
    if share:
        _warn("--share opens a public link through Gradio's servers; anyone with the link can use the app")
    serve(list(models) or [default_model()], host, port, share, device=device, dtype=dtype, say=echo)


@cli.group()
def bench() -> None:
    """Benchmarks: edit quality on the shapes model, memory and speed on SD; they print tables and write JSON."""


@bench.command(name="sanity")
@click.option("--prompts", type=int, default=200, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@user_errors
def bench_sanity(prompts, out) -> None:
    """Text-to-image: how often the shapes model draws what the prompt asks."""
    from pathlib import Path

    from .bench.sanity import sanity
    from .images import labelled_grid

    rates, images = sanity(prompts)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sanity.json").write_text(json.dumps({"prompts": prompts, "percent": rates}, indent=1))
    labelled_grid([(str(i), image) for i, image in enumerate(images[:64])], 8, 64).save(Path(out) / "sanity.png")
    click.echo(f"Over {prompts} prompts: " + ", ".join(f"{k} {v:.0f} %" for k, v in rates.items()))


@bench.command(name="edits")
@click.option("--cases", type=int, default=120, show_default=True,
              help="Cases of the split (each trains one profile; baselines not yet cached are computed too).")
@click.option("--split", type=click.Choice(["held-out", "tuning"]), default="held-out", show_default=True,
              help="held-out: cases never used to choose the defaults; tuning: the cases they were chosen on.")
@click.option("--classic-cases", type=int, default=4, show_default=True,
              help="Run classic full-UNet Imagic on the first N cases only (the slowest baseline; then cached).")
@click.option("--cache", type=click.Path(dir_okay=False), default="docs/bench/baselines.json", show_default=True,
              help="The baselines' scores, kept per shapes model and case.")
@click.option("--recompute-baselines", is_flag=True, help="Compute the baselines again instead of reading the cache.")
@click.option("--workers", type=int, default=None,
              help="Processes running cases side by side, one small model each.  [default: the CPU count]")
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@user_errors
def bench_edits(cases, split, classic_cases, cache, recompute_baselines, workers, out) -> None:
    """Edit quality at the shipped defaults: imagic-lora vs SDEdit, text-to-image and classic Imagic."""
    from pathlib import Path

    from .bench.edits import BenchConfig, run
    from .bench.report import tables

    more = {} if workers is None else {"workers": workers}
    config = BenchConfig(cases=cases, split=split, classic_cases=min(classic_cases, cases), cache=Path(cache),
                         recompute_baselines=recompute_baselines, **more)
    summary = run(config, Path(out))
    click.echo(tables(summary))
    click.echo(f"\nWrote {Path(out) / 'results.json'} and {Path(out) / 'contact-sheet.png'}")


@bench.command(name="keep")
@click.option("--keep-threshold", type=float, default=_default(ApplyConfig, "keep_threshold"), show_default=True)
@click.option("--size", type=click.IntRange(64, 2048), default=512, show_default=True,
              help="The photos' side in pixels.")
@user_errors
def bench_keep(keep_threshold, size) -> None:
    """The keep step on real photos with simulated edits: how much of each edit it undoes (no model runs)."""
    from .bench.photos import measure, table

    ApplyConfig(keep_threshold=keep_threshold)  # the same bounds as apply
    click.echo(table(measure(keep_threshold, size)))


@bench.command(name="schedules")
@click.option("--cases", type=int, default=10, show_default=True,
              help="Shapes edit cases (each trains every schedule).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cases.")
@click.option("--schedule", "names", multiple=True,
              help="Run only this schedule (repeat for several; its name as the table prints it).")
@click.option("--classic/--no-classic", default=True, show_default=True,
              help="Also train classic Imagic, the comparison (the longest part of the run).")
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@user_errors
def bench_schedules(cases, seed, names, classic, out) -> None:
    """Compute per profile: training schedules against classic Imagic's 500+1000 steps, time and quality."""
    from pathlib import Path

    from .bench.schedules import SCHEDULES, schedule_table, settings, summarize_schedules, sweep

    unknown = [name for name in names if name not in SCHEDULES]
    if unknown:
        raise click.BadParameter(f"no schedule {unknown[0]!r}; the schedules: {', '.join(SCHEDULES)}",
                                 param_hint="--schedule")
    chosen = {name: SCHEDULES[name] for name in names} or None
    rows = sweep(cases, seed, chosen, classic=classic)
    summary = summarize_schedules(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "schedules.json").write_text(
        json.dumps({"schedules": settings(chosen), "summary": summary, "rows": rows}, indent=1))
    click.echo(schedule_table(summary))
    click.echo(f"\nWrote {Path(out) / 'schedules.json'}")


@bench.command(name="train")
@click.option("--family", type=click.Choice(BENCH_FAMILIES), default="sd15", show_default=True,
              help="Architecture, built from shipped configs (tiny: the built-in test model, for dry runs).")
@click.option("--resolution", type=int, default=None,
              help="Image size in pixels [default: the family's: 512 for sd15, 768 for sd21, 1024 for sdxl].")
@click.option("--steps", type=int, default=3, show_default=True, help="Timed training steps per stage.")
@click.option("--apply-steps", type=int, default=10, show_default=True, help="Sampling steps timed in apply.")
@click.option("--apply-images", type=int, default=2, show_default=True, help="Images per sampling batch.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@user_errors
def bench_train(out, **settings) -> None:
    """Memory and speed: imagic-lora's lean path vs classic Imagic on a real SD architecture (random weights)."""
    from pathlib import Path

    from .bench.train import TrainBenchConfig, report, run

    results = run(TrainBenchConfig(**settings))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "train.json").write_text(json.dumps(results, indent=1))
    click.echo(report(results))
    click.echo(f"\nWrote {Path(out) / 'train.json'}")


@bench.command(name="batch")
@click.option("--rows", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Shapes photos to train, once per variant.")
@click.option("--model", default="builtin:shapes", show_default=True)
@click.option("--per-row/--no-per-row", default=True, show_default=True,
              help="Also time one train command per row.")
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True)
@user_errors
def bench_batch(rows, model, per_row, out) -> None:
    """Throughput of train-batch: rows per hour with 1 and 2 processes, and versus one train per row."""
    from pathlib import Path

    from .bench.batch import BatchBenchConfig, report, run

    results = run(BatchBenchConfig(rows=rows, model=model, per_row_train=per_row))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "batch.json").write_text(json.dumps(results, indent=1))
    click.echo(report(results))
    click.echo(f"\nWrote {Path(out) / 'batch.json'}")


def main() -> None:
    cli(prog_name="imagic-lora")


if __name__ == "__main__":
    main()
