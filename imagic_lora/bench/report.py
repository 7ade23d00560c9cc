"""Turn benchmark rows into tables: per method, per edit type, and along α."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import fmean

from .cases import EDIT_TYPES


def variant(row: dict) -> str:
    if "alpha" in row:
        return f"{row['method']} α={row['alpha']:.1f}"
    if "strength" in row:
        return f"{row['method']} strength={row['strength']:.1f}"
    return row["method"]


def rate(rows: list[dict], key: str) -> float:
    """Percent of ``rows`` whose ``key`` is true."""
    return 100.0 * sum(bool(r[key]) for r in rows) / len(rows) if rows else math.nan


def capped_mean(values: list[float]) -> float:
    finite = [min(v, 60.0) for v in values]  # identical images have infinite PSNR; cap at 60 dB
    return sum(finite) / len(finite) if finite else math.nan


def summarize(rows: list[dict], default_alpha: float) -> dict:
    """Rates in percent, mean PSNR (dB) and training seconds per case, for every method variant."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[variant(row)].append(row)
    methods = {
        name: {
            "cases": len(group),
            "edit_success": rate(group, "edit_success"),
            "preserved": rate(group, "preserved"),
            "success": rate(group, "success"),
            "psnr": capped_mean([r["psnr"] for r in group]),
            "train_seconds": fmean(r["train_seconds"] for r in group),
            "by_edit": {edit: rate([r for r in group if r["edit"] == edit], "success") for edit in EDIT_TYPES},
        }
        for name, group in groups.items()
    }
    return {"methods": methods, "default_alpha": default_alpha}


def headline(summary: dict) -> list[str]:
    """The variants compared in the main table: defaults and every baseline."""
    alpha = summary["default_alpha"]
    names = [f"imagic-lora α={alpha:.1f}", f"classic-imagic α={alpha:.1f}"]
    names += sorted(n for n in summary["methods"] if n.startswith("sdedit"))
    names.append("text-to-image")
    best = max((n for n in summary["methods"] if n.startswith("imagic-lora")),
               key=lambda n: (summary["methods"][n]["success"], summary["methods"][n]["edit_success"]))
    if best not in names:
        names.insert(1, f"{best} (best α, chosen after the fact)")
    return names


def tables(summary: dict) -> str:
    """Markdown tables: the comparison, success per edit type, and the α curves."""
    methods = summary["methods"]

    def stats(name: str) -> dict:
        return methods[name.split(" (")[0]]

    lines = ["| method | edit success | preserved | both | PSNR to truth (dB) | train s/case |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in headline(summary):
        m = stats(name)
        lines.append(f"| {name} | {m['edit_success']:.0f} % | {m['preserved']:.0f} % | {m['success']:.0f} % | "
                     f"{m['psnr']:.1f} | {m['train_seconds']:.1f} |")
    lines += ["", "| method | " + " | ".join(EDIT_TYPES) + " |", "| --- |" + " ---: |" * len(EDIT_TYPES)]
    for name in headline(summary):
        by_edit = stats(name)["by_edit"]
        lines.append(f"| {name} | " + " | ".join(f"{by_edit[e]:.0f} %" for e in EDIT_TYPES) + " |")
    lines += ["", "| α | imagic-lora edit / preserved / both | classic-imagic edit / preserved / both |",
              "| ---: | --- | --- |"]
    alphas = sorted({float(n.split("α=")[1]) for n in methods if "α=" in n})
    for alpha in alphas:
        cells = []
        for method in ("imagic-lora", "classic-imagic"):
            m = methods.get(f"{method} α={alpha:.1f}")
            cells.append(f"{m['edit_success']:.0f} / {m['preserved']:.0f} / {m['success']:.0f} %" if m else "-")
        lines.append(f"| {alpha:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
