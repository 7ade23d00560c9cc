"""An experiment for the keep step (issue 24): mask the edit against a reference sample instead of the photo.

    python scripts/keep_reference.py [--cases 32] [--first 0]

The reference is the source prompt sampled at the same α from the same inverted start and noise maps: it
carries the sampler's drift as the edit does, so only what the edit prompt asked for differs between the two.
Per tuning case (``make_cases(n, 0)``) it prints whether the edit scores edit-and-keep with nothing kept, with
today's keep step (edit against photo, threshold 0.25) and with the reference mask at three thresholds; then
the totals. Measured on 2026-12-03 on cases 0-31: 11, 29, 29 (0.25), 30 (0.15) and 24 (0.10) of 32.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from imagic_lora.bench.cases import make_cases, score
from imagic_lora.bench.edits import train_imagic_lora
from imagic_lora.config import ApplyConfig, TrainConfig
from imagic_lora.images import to_tensor
from imagic_lora.keep import _pixels, _to_image, changed_mask, colour_offset, keep_unchanged
from imagic_lora.lora import fused_lora
from imagic_lora.method import decode_latents, encode_image, encode_prompt, generate, inverted_start
from imagic_lora.models import load_model
from imagic_lora.shapes.model import SHAPES_MODEL

THRESHOLDS = (0.25, 0.15, 0.1)


def keep_by_reference(edited, reference, photo, threshold: float):
    """The keep step with its mask taken from ``edited`` against ``reference`` rather than against ``photo``."""
    mask = changed_mask(edited, reference, threshold)
    pixels, original = _pixels(edited), _pixels(photo)
    matched = (pixels + colour_offset(pixels, original, mask)).clamp_(0, 1)
    return _to_image(torch.lerp(original, matched, mask[0, 0, :, :, None]))


def case_row(base, case, train: TrainConfig) -> dict:
    latents = encode_image(base, to_tensor(case.input_image()))
    e_opt, lora, _ = train_imagic_lora(base, latents, encode_prompt(base, case.source_prompt), train, case.index)
    sampling = replace(ApplyConfig(), keep=False, seed=case.index)
    photo = decode_latents(base, latents)
    with fused_lora(base.pipe.unet, lora, train.rank, train.lora_alpha):
        start = inverted_start(base, latents, e_opt, sampling, progress=False)
        [(_, _, edit)] = generate(base, e_opt, case.edit_prompt, sampling, 32, progress=False, start=start)
        [(_, _, reference)] = generate(base, e_opt, case.source_prompt, sampling, 32, progress=False, start=start)
    row = {"case": case.index, "type": case.edit, "nothing kept": score(edit, case)["success"],
           "keep": score(keep_unchanged(edit, photo, sampling.keep_threshold), case)["success"]}
    for threshold in THRESHOLDS:
        row[f"reference {threshold}"] = score(keep_by_reference(edit, reference, photo, threshold), case)["success"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    base = load_model(SHAPES_MODEL, device="cpu")
    rows = []
    for case in make_cases(args.first + args.cases, 0)[args.first:]:
        rows.append(case_row(base, case, TrainConfig()))
        print(json.dumps(rows[-1]), flush=True)
    for key in rows[0]:
        if key not in ("case", "type"):
            print(f"{key}: {sum(row[key] for row in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
