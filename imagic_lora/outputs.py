"""The PNGs an ``apply`` run writes: their names, reserved for the whole run, and their parameters.

One rule names every output: ``NAME_PROMPT-SLUG_aALPHA_sSEED.png`` and ``NAME_PROMPT-SLUG_grid.png``. A
run hands each name out once: a prompt whose slug is taken (``cat``, ``cat``, ``CAT!``, ``cat 2``) gets
``-2``, ``-3``…, and so does a file whose name is taken (two α that print alike), so no output of a run
overwrites another. Files left by earlier runs are overwritten, as a re-run expects.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from . import __version__
from .images import labelled_grid, save_png, thumbnail_image


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of ``text``: lowercase letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "edit"


def alpha_label(alpha: float) -> str:
    """α as a file name shows it: two decimals, or as many as tell it apart (0.705)."""
    return f"{alpha:.2f}" if round(alpha, 2) == alpha else f"{alpha:.6g}"


class OutputNames:
    """File names handed out once per run, compared as a case-insensitive file system would."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}  # the number to try next for a name asked for again

    def claim(self, stem: str, suffix: str = "") -> str:
        """``stem + suffix``, or ``stem-2 + suffix``, ``stem-3``… if this run already used it."""
        asked = f"{stem}{suffix}".lower()
        number = self._next.get(asked, 1)
        name = f"{stem}{suffix}" if number == 1 else f"{stem}-{number}{suffix}"
        while name.lower() in self._taken:
            number += 1
            name = f"{stem}-{number}{suffix}"
        self._next[asked] = number + 1
        self._taken.add(name.lower())
        return name

    def prompt_stem(self, profile: str, prompt: str) -> str:
        """The stem of one prompt's files: ``PROFILE_SLUG``, unique among this run's prompts."""
        return self.claim(f"{profile}_{slug(prompt)}", "/")[:-1]  # "/" keeps stems apart from file names


def write_outputs(profile, prompt, base, config, results, out: Path, stem: str, used: dict,
                  names: OutputNames) -> list[Path]:
    """One PNG per (α, seed) and, when there are several, a labelled grid; each carries its parameters."""
    paths = []
    for alpha, seed, image in results:
        path = out / names.claim(f"{stem}_a{alpha_label(alpha)}_s{seed}", ".png")
        save_png(image, path, parameters(profile, prompt, base, config, alpha, seed, used))
        paths.append(path)
    if config.grid and len(results) > 1:
        path = out / names.claim(f"{stem}_grid", ".png")
        size = results[0][2].width
        source = thumbnail_image(profile.thumbnail)
        tiles: list[tuple[str, Image.Image]] = []
        for alpha in config.alphas:
            tiles.append(("input", source))
            tiles += [(f"alpha {a:.2f}  seed {s}", im) for a, s, im in results if a == alpha]
        save_png(labelled_grid(tiles, len(config.seed_list) + 1, max(size, 128)), path,
                 parameters(profile, prompt, base, config, None, None, used))
        paths.append(path)
    return paths


def parameters(profile, prompt, base, config, alpha, seed, used: dict) -> dict:
    """The generation parameters a PNG carries (A1111 infotext and JSON)."""
    return {
        "profile": profile.name, "prompt": prompt, "source_prompt": profile.metadata.source_prompt,
        "alpha": alpha if alpha is not None else list(config.alphas),
        "seed": seed if seed is not None else config.seed_list,
        "steps": config.steps, "guidance": config.guidance, "negative_prompt": config.negative_prompt,
        "size": profile.resolution, "model": base.model_id,
        "model_hash": profile.metadata.settings.base_fingerprint.split("-")[-1][:10],
        "scheduler": type(base.pipe.scheduler).__name__, **used,
        "generator": f"imagic-lora {__version__}",
    }
