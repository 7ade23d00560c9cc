"""Turn benchmark rows into tables: per method, per edit type and along α, each rate with its 95 % interval."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import fmean

from .cases import EDIT_TYPES

Z95 = 1.959964


def variant(row: dict) -> str:
    name = row["method"]
    if row.get("variant"):
        name += f" [{row['variant']}]"
    if "alpha" in row:
        return f"{name} α={row['alpha']:.1f}"
    if "strength" in row:
        return f"{name} strength={row['strength']:.1f}"
    return name


def rate(rows: list[dict], key: str) -> float:
    """Percent of ``rows`` whose ``key`` is true."""
    return 100.0 * sum(bool(r[key]) for r in rows) / len(rows) if rows else math.nan


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a rate, in percent."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


def interval(rows: list[dict], key: str) -> list[float]:
    return list(wilson(sum(bool(r[key]) for r in rows), len(rows)))


def capped_mean(values: list[float]) -> float:
    finite = [min(v, 60.0) for v in values]  # identical images have infinite PSNR; cap at 60 dB
    return sum(finite) / len(finite) if finite else math.nan


def _stats(group: list[dict]) -> dict:
    by_edit = {edit: [r for r in group if r["edit"] == edit] for edit in EDIT_TYPES}
    return {
        "cases": len(group),
        **{key: rate(group, key) for key in ("edit_success", "preserved", "success")},
        **{f"{key}_ci": interval(group, key) for key in ("edit_success", "preserved", "success")},
        "psnr": capped_mean([r["psnr"] for r in group]),
        "train_seconds": fmean(r["train_seconds"] for r in group),
        "seam": fmean(seams) if (seams := [r["seam"] for r in group if "seam" in r]) else math.nan,
        "by_edit": {edit: rate(rows, "success") for edit, rows in by_edit.items()},
        "by_edit_ci": {edit: interval(rows, "success") for edit, rows in by_edit.items()},
        "by_edit_cases": {edit: len(rows) for edit, rows in by_edit.items()},
    }


def summarize(rows: list[dict], default_alpha: float) -> dict:
    """Rates in percent with Wilson intervals, mean PSNR (dB) and training seconds, for every method variant."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[variant(row)].append(row)
    return {"methods": {name: _stats(group) for name, group in groups.items()}, "default_alpha": default_alpha}


DEFAULTS = "imagic-lora [defaults]"
IDEAL = "ideal target"  # the ground truth's VAE round trip, as is and through the keep step
STRONG_GUIDANCE = 7.5  # the guidance real Stable Diffusion photos need, measured beside the default


def headline(summary: dict) -> list[str]:
    """The variants compared in the main table: the defaults, what each part adds, and every baseline."""
    methods = summary["methods"]
    alpha = f"α={summary['default_alpha']:.1f}"
    names = [f"{DEFAULTS} {alpha}", f"imagic-lora [defaults, nothing kept] {alpha}",
             f"imagic-lora [defaults, guidance {STRONG_GUIDANCE:g}] {alpha}"]
    names += sorted(n for n in methods if n.startswith("imagic-lora [start"))
    names += sorted(n for n in methods if n.startswith("imagic-lora [before"))
    names += sorted(n for n in methods if n.startswith(("classic-imagic", "sdedit", "text-to-image", IDEAL)))
    return [n for n in names if n in methods]


def best_sdedit(summary: dict) -> str | None:
    """The plain SDEdit strength with the highest edit-and-keep rate."""
    sdedit = [n for n in summary["methods"] if n.startswith("sdedit strength")]
    return max(sdedit, key=lambda n: summary["methods"][n]["success"], default=None)


def _pct(m: dict, key: str) -> str:
    low, high = m[f"{key}_ci"]
    return f"{m[key]:.0f} % ({low:.0f}–{high:.0f})"


def tables(summary: dict) -> str:
    """Markdown tables: the comparison, success per edit type, the α curve and the targets."""
    methods = summary["methods"]
    lines = ["| method | cases | edit success | preserved | both | PSNR to truth (dB) | train s/case |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in headline(summary):
        m = methods[name]
        lines.append(f"| {name} | {m['cases']} | {_pct(m, 'edit_success')} | {_pct(m, 'preserved')} | "
                     f"{_pct(m, 'success')} | {m['psnr']:.1f} | {m['train_seconds']:.1f} |")
    lines += ["", "| method (both, per edit type) | " + " | ".join(EDIT_TYPES) + " |",
              "| --- |" + " ---: |" * len(EDIT_TYPES)]
    for name in headline(summary):
        m = methods[name]
        cells = [f"{m['by_edit'][e]:.0f} % ({m['by_edit_ci'][e][0]:.0f}–{m['by_edit_ci'][e][1]:.0f})"
                 for e in EDIT_TYPES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| α | edit success | preserved | both | PSNR to truth (dB) |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for name in sorted(n for n in methods if n.startswith(f"{DEFAULTS} α=")):
        m = methods[name]
        lines.append(f"| {name.split('α=')[1]} | {_pct(m, 'edit_success')} | {_pct(m, 'preserved')} | "
                     f"{_pct(m, 'success')} | {m['psnr']:.1f} |")
    return "\n".join([*lines, "", *targets(summary)])


def _keep_lines(summary: dict) -> list[str]:
    """The keep step's ceiling, the seam it leaves and the defaults at the guidance real models need."""
    methods, alpha = summary["methods"], f"α={summary['default_alpha']:.1f}"
    ours, unkept = methods.get(f"{DEFAULTS} {alpha}"), methods.get(f"imagic-lora [defaults, nothing kept] {alpha}")
    lines = []
    ideal, kept_ideal = methods.get(f"{IDEAL} [as is]"), methods.get(f"{IDEAL} [through the keep step]")
    if ideal and kept_ideal:
        lines.append(f"- keep ceiling: the ground truth through the keep step {_pct(kept_ideal, 'success')} both, "
                     f"as is {_pct(ideal, 'success')}")
    if ours and unkept:
        lines.append(f"- seam (mean levels to the truth 1-4 px around the edit): {ours['seam']:.1f} with the keep "
                     f"step, {unkept['seam']:.1f} nothing kept, {kept_ideal['seam'] if kept_ideal else math.nan:.1f} "
                     "for the ground truth through the keep step")
    strong = methods.get(f"imagic-lora [defaults, guidance {STRONG_GUIDANCE:g}] {alpha}")
    if strong:
        lines.append(f"- edit-and-keep at guidance {STRONG_GUIDANCE:g}: {_pct(strong, 'success')}")
    return lines


def targets(summary: dict) -> list[str]:
    """The issue's targets, each with the measured value."""
    methods = summary["methods"]
    ours = methods.get(f"{DEFAULTS} α={summary['default_alpha']:.1f}")
    if ours is None:
        return []
    lines = [f"- edit-and-keep at the defaults: {_pct(ours, 'success')} (target ≥ 60 %)"]
    sdedit = best_sdedit(summary)
    if sdedit:
        best = methods[sdedit]["success"]
        ratio = ours["success"] / best if best else math.inf
        lines.append(f"- best SDEdit ({sdedit}): {_pct(methods[sdedit], 'success')}; the defaults make {ratio:.1f}× "
                     "(target ≥ 2×)")
    ceiling = summary.get("ceiling")
    reconstructions = {"the default guidance": "imagic-lora [defaults, nothing kept] α=0.0",
                       f"guidance {STRONG_GUIDANCE:g}": f"imagic-lora [defaults, guidance {STRONG_GUIDANCE:g}, "
                                                        "nothing kept] α=0.0"}
    for guidance, name in reconstructions.items():
        alpha0 = methods.get(name)
        if alpha0 and ceiling:
            room = ceiling["input_preserved"]
            share = 100 * alpha0["preserved"] / room if room else math.nan
            lines.append(f"- reconstruction at α 0, nothing kept, at {guidance}: {_pct(alpha0, 'preserved')} "
                         f"preserved, the VAE round trip {room:.0f} % on the same cases: {share:.0f} % of the "
                         "ceiling (target ≥ 95 %)")
    lines += _keep_lines(summary)
    worst = min(EDIT_TYPES, key=lambda e: ours["by_edit"][e])
    lines.append(f"- weakest edit type: {worst}, {ours['by_edit'][worst]:.0f} % both (target ≥ 30 %)")
    timing = summary.get("timing")
    if timing:
        lines.append(f"- one image at the defaults (stored inversion, keep) {timing['defaults_seconds']:.2f} s vs "
                     f"plain sampling {timing['plain_seconds']:.2f} s over {timing['cases']} cases: "
                     f"{100 * (timing['ratio'] - 1):+.1f} % (target within 5 %)")
    return lines
