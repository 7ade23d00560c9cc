"""The edit benchmark: cases, scoring, tables, the baseline cache, one case end to end (more: test_shapes_model)."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import run
from PIL import Image

from imagic_lora.bench import edits
from imagic_lora.bench.cases import EDIT_TYPES, make_cases, score
from imagic_lora.bench.report import IDEAL, summarize, tables
from imagic_lora.config import ApplyConfig
from imagic_lora.shapes.world import ATTRIBUTES, background_rgb


def test_cases_change_exactly_one_attribute_and_cycle_through_edit_types():
    cases = make_cases(42, seed=3)
    assert [c.edit for c in cases[:6]] == list(EDIT_TYPES)
    for case in cases:
        fields = (*ATTRIBUTES, "background", "second")
        changed = {a for a in fields if getattr(case.scene, a) != getattr(case.target, a)}
        expected = {"column", "row"} if case.edit == "position" else {"second"} if case.edit == "add" else {case.edit}
        assert changed and changed <= expected
        assert case.edit_prompt != case.source_prompt
    assert make_cases(42, seed=3) == cases


def test_ground_truth_scores_as_success_and_the_unedited_input_does_not():
    for case in make_cases(300, seed=1):
        truth = score(case.ground_truth(), case)
        assert truth["success"] and truth["psnr"] == float("inf")
        unedited = score(case.input_image(), case)
        assert unedited["preserved"] and not unedited["edit_success"]


def test_the_marker_stays_clear_of_the_shape_before_and_after_the_edit():
    """A marker drawn on or against the shape is not a separate detail; such cases get it mirrored away."""
    from imagic_lora.bench.cases import MARKER_GAP

    for case in make_cases(300, seed=0):
        x, y = case.details.marker_xy
        for scene in (case.scene, case.target):
            reading = case.input_image() if scene is case.scene else case.ground_truth()
            pixels = np.asarray(reading, dtype=int)
            # nothing but the background within MARKER_GAP of the marker's 2x2 box, except the marker itself
            box = pixels[max(0, y - MARKER_GAP) : y + 2 + MARKER_GAP, max(0, x - MARKER_GAP) : x + 2 + MARKER_GAP]
            colours = {tuple(c) for c in box.reshape(-1, 3)}
            assert colours <= {background_rgb(scene.background, case.details), case.details.marker_colour}, \
                case.index
        assert (x, y) in _corner_bands(), case.index  # mirrored, it is still in a corner band


def _corner_bands() -> set:
    """Every corner-band position a marker may take, mirrored or not."""
    from imagic_lora.shapes.world import SIZE

    bands = [*range(1, 5), *range(SIZE - 6, SIZE - 2)]
    return {(x, y) for x in bands for y in bands}


def test_tables_report_every_method_alpha_and_interval():
    rows = []
    for case in make_cases(8):
        truth, unedited = score(case.ground_truth(), case), score(case.input_image(), case)
        for alpha in (0.0, 0.9):
            rows.append({"method": "imagic-lora", "variant": "defaults", "alpha": alpha, "train_seconds": 2.0,
                         "edit": case.edit, **(truth if alpha else unedited)})
        rows.append({"method": "imagic-lora", "variant": "defaults, nothing kept", "alpha": 0.0,
                     "train_seconds": 2.0, "edit": case.edit, **unedited})
        rows.append({"method": "imagic-lora", "variant": "defaults, guidance 7.5, nothing kept", "alpha": 0.0,
                     "train_seconds": 2.0, "edit": case.edit, **unedited, "preserved": case.index >= 2})
        rows.append({"method": "classic-imagic", "alpha": 0.7, "train_seconds": 80.0, "edit": case.edit, **unedited})
        rows.append({"method": "sdedit", "strength": 0.7, "train_seconds": 0.0, "edit": case.edit,
                     **(truth if case.index < 2 else unedited)})
    summary = summarize(rows, 0.9) | {"ceiling": {"cases": 8, "input_preserved": 100.0}}
    methods = summary["methods"]
    assert methods["imagic-lora [defaults] α=0.9"]["success"] == 100.0
    assert methods["classic-imagic α=0.7"]["train_seconds"] == 80.0, "seconds are not capped like PSNR"
    low, high = methods["sdedit strength=0.7"]["success_ci"]
    assert methods["sdedit strength=0.7"]["success"] == 25.0 and 7 < low < 8 and 59 < high < 60  # Wilson, 2 of 8
    text = tables(summary)
    every = "100 % (68–100)"
    assert f"| imagic-lora [defaults] α=0.9 | 8 | {every} | {every} | {every} | 60.0 | 2.0 |" in text
    assert "| classic-imagic α=0.7 | 8 | 0 % (0–32) |" in text
    assert "| 0.0 | 0 % (0–32) | 100 % (68–100) | 0 % (0–32) |" in text
    assert "- best SDEdit (sdedit strength=0.7): 25 % (7–59); the defaults make 4.0× (target ≥ 2×)" in text
    assert "- reconstruction at α 0, nothing kept, at the default guidance: 100 % (68–100) preserved, the VAE " \
           "round trip 100 % on the same cases: 100 % of the ceiling (target ≥ 95 %)" in text
    assert "- reconstruction at α 0, nothing kept, at guidance 7.5: 75 % (41–93) preserved, the VAE round trip " \
           "100 % on the same cases: 75 % of the ceiling (target ≥ 95 %)" in text


def test_wilson_intervals_match_the_textbook_values():
    from imagic_lora.bench.report import wilson

    low, high = wilson(60, 100)
    assert abs(low - 50.2) < 0.1 and abs(high - 69.1) < 0.1
    assert wilson(0, 10)[0] == 0.0 and abs(wilson(10, 10)[1] - 100.0) < 1e-9


def test_bench_edits_passes_its_options_to_the_benchmark_and_refuses_a_bad_split(monkeypatch, tmp_path):
    configs = []
    monkeypatch.setattr(edits, "run", lambda config, out: configs.append(config) or {})
    monkeypatch.setattr("imagic_lora.bench.report.tables", lambda summary: "table")
    assert run("bench", "edits", "--cases", 2, "--split", "tuning", "--classic-cases", 1,
               "--recompute-baselines", "--workers", 3, "--out", tmp_path).exit_code == 0
    assert run("bench", "edits", "--out", tmp_path).exit_code == 0
    config, default = configs
    assert (config.cases, config.split, config.classic_cases, config.recompute_baselines) == (2, "tuning", 1, True)
    assert config.workers == 3 and default.workers == (os.cpu_count() or 1), "one process per core by default"
    assert config.apply == ApplyConfig(), "the benchmark measures the shipped defaults"
    refused = run("bench", "edits", "--cases", 0, "--out", tmp_path)
    assert refused.exit_code == 1 and len(configs) == 2
    assert refused.stderr.strip() == "Error: --cases must be in [1, 10000], got 0"
    refused = run("bench", "edits", "--workers", 0, "--out", tmp_path)
    assert refused.exit_code == 1 and refused.stderr.strip() == "Error: --workers must be in [1, 64], got 0"


def test_the_baseline_cache_key_changes_with_the_case_and_only_with_it():
    from imagic_lora.bench.edits import case_key

    first, again = make_cases(3, 1), make_cases(3, 1)
    assert [case_key(c, 1) for c in first] == [case_key(c, 1) for c in again]
    assert len({case_key(c, 1) for c in first}) == 3
    assert case_key(make_cases(3, 0)[2], 0) != case_key(first[2], 1)


class _LosslessVAE:
    """A stand-in VAE whose round trip is exact: the ceiling it gets is the world's own."""

    device, dtype = torch.device("cpu"), torch.float32

    def encode(self, pixels):
        return type("Encoded", (), {"latent_dist": type("Dist", (), {"mean": pixels})()})()

    def decode(self, latents):
        return type("Decoded", (), {"sample": latents})()


@pytest.mark.slow
def test_a_lossless_round_trip_reaches_the_full_ceiling_and_so_does_the_shipped_vae():
    from imagic_lora.bench.ceiling import vae_ceiling
    from imagic_lora.shapes.model import shapes_pipeline

    perfect = vae_ceiling(_LosslessVAE(), cases=240)
    assert perfect["input_preserved"] >= 0.99 and perfect["truth_both"] >= 0.99 and len(perfect["misses"]) <= 2
    shipped = vae_ceiling(shapes_pipeline().vae, cases=600)
    assert shipped["input_preserved"] >= 0.97 and shipped["truth_both"] >= 0.97, shipped["misses"]
    cases = make_cases(600)
    for edit in EDIT_TYPES:  # 100 cases of each type: at most 3 misses, 97 %
        assert sum(cases[i].edit == edit for i in shipped["misses"]) <= 3, (edit, shipped["misses"])


def _rows_without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in rows]


@pytest.mark.slow
def test_bench_edits_runs_a_case_end_to_end_and_computes_each_baseline_only_once(monkeypatch, tmp_path):
    from imagic_lora.config import TrainConfig

    cache = tmp_path / "baselines.json"
    config = edits.BenchConfig(cases=1, split="tuning", train=TrainConfig(embedding_steps=3, lora_steps=3),
                               alphas=(0.0, 1.0), ablation_cases=0, classic_cases=0, timed_cases=0, cache=cache,
                               workers=1)  # in this process, where the monkeypatches below act
    first = edits.run(config, tmp_path / "first", progress=False)
    results = json.loads((tmp_path / "first" / "results.json").read_text())
    variants = {(r["method"], r.get("variant"), r.get("alpha"), r.get("strength")) for r in results["rows"]}
    assert {("imagic-lora", "defaults", 1.0, None), ("imagic-lora", "defaults, nothing kept", 0.0, None),
            ("sdedit", None, None, 0.5), ("sdedit + keep", None, None, 0.7),
            ("text-to-image", None, None, None), ("imagic-lora", "defaults, guidance 7.5", 1.0, None),
            ("ideal target", "as is", None, None), ("ideal target", "through the keep step", None, None)} <= variants
    assert all("seam" in r for r in results["rows"] if r.get("variant", "").startswith("defaults") and
               "guidance" not in r["variant"])
    assert (tmp_path / "first" / "contact-sheet.png").is_file()
    assert first["ceiling"] == {"cases": 1, "input_preserved": 100.0}, "case 0's round trip keeps the scene"
    baselines = [r for r in results["rows"] if r["method"] not in ("imagic-lora", IDEAL)]
    assert len(baselines) == 5 and not any(r["method"] == edits.CLASSIC_METHOD for r in baselines)

    # a rerun takes the baselines from the cache; asking for classic Imagic computes only that
    def refuse(*args):
        raise AssertionError("the cached baselines were computed again")

    classic = {"method": edits.CLASSIC_METHOD, "alpha": 0.7, "train_seconds": 1.0, "success": False,
               "edit_success": True, "preserved": False, "psnr": 20.0}
    monkeypatch.setattr(edits, "baseline_rows", refuse)
    monkeypatch.setattr(edits, "classic_rows", lambda base, case, latents: [dict(classic)])
    edits.run(replace(config, classic_cases=1), tmp_path / "second", progress=False)
    again = json.loads((tmp_path / "second" / "results.json").read_text())["rows"]
    rerun = [r for r in again if r["method"] not in ("imagic-lora", edits.CLASSIC_METHOD, IDEAL)]
    assert _rows_without_seconds(rerun) == _rows_without_seconds(baselines)
    assert [r["alpha"] for r in again if r["method"] == edits.CLASSIC_METHOD] == [0.7]
    assert sum(len(case["rows"]) for case in json.loads(cache.read_text()).popitem()[1].values()) == 6

    # recomputing replaces this case's rows and leaves every other entry of the cache alone
    stored = json.loads(cache.read_text())
    stored["another model|settings"] = {"1/0/abc": {"rows": [dict(classic)]}}
    cache.write_text(json.dumps(stored))
    sdedit = {**classic, "method": "sdedit", "strength": 0.5}
    monkeypatch.setattr(edits, "baseline_rows", lambda base, case, photo: [dict(sdedit)])
    edits.run(replace(config, recompute_baselines=True), tmp_path / "third", progress=False)
    after = json.loads(cache.read_text())
    assert after["another model|settings"] == stored["another model|settings"]
    (case_rows,) = [case["rows"] for section, cases in after.items() if section != "another model|settings"
                    for case in cases.values()]
    assert [row["method"] for row in case_rows] == ["sdedit"]


@pytest.mark.slow
def test_bench_edits_scores_the_same_in_worker_processes_as_in_one_process(tmp_path):
    from imagic_lora.config import TrainConfig

    config = edits.BenchConfig(cases=2, split="held-out", train=TrainConfig(embedding_steps=3, lora_steps=3),
                               alphas=(0.0, 1.0), ablation_cases=1, classic_cases=0, timed_cases=1)
    results = {}
    for workers in (1, 2):
        out = tmp_path / str(workers)
        edits.run(replace(config, workers=workers, cache=out / "baselines.json"), out, progress=False)
        results[workers] = json.loads((out / "results.json").read_text())
    # each worker runs on its own CPU thread, which changes float sums in the last digits only
    one, two = ([{k: v for k, v in row.items() if k not in ("train_seconds", "psnr")} for row in r["rows"]]
                for r in results.values())
    assert one == two and len(one) > 10
    psnr = [(a["psnr"], b["psnr"]) for a, b in zip(results[1]["rows"], results[2]["rows"], strict=True)]
    assert all(abs(a - b) < 1e-2 for a, b in psnr)  # 100 held-out cases: at most 0.002 dB apart
    assert {row["case"] for row in results[2]["rows"]} == {0, 1}
    assert results[2]["summary"]["timing"]["cases"] == 1


def test_bench_keep_prints_the_share_restored_for_every_photo_and_edit():
    from imagic_lora.bench.photos import PHOTOS, WHOLE_PICTURE_EDITS

    result = run("bench", "keep", "--size", 128)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| edit (share of pixels restored) | " + " | ".join(PHOTOS) + " |"
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == [*WHOLE_PICTURE_EDITS, "pasted object"]
    assert lines[-1].count("object whole") == len(PHOTOS)
    refused = run("bench", "keep", "--keep-threshold", 2)
    assert refused.exit_code == 1 and refused.stderr.strip().startswith("Error: --keep-threshold must be in (0, 1]")


def test_the_restored_share_counts_pixels_moved_back_toward_the_photo():
    from imagic_lora.bench.photos import WHOLE_PICTURE_EDITS, photo, restored_share

    original = photo("coffee", 128)
    edited = WHOLE_PICTURE_EDITS["darker x0.7"](original)
    assert restored_share(edited, edited, original) == 0.0  # nothing kept: nothing restored
    moved = np.abs(np.asarray(original, dtype=int) - np.asarray(edited, dtype=int)).max(-1) > 8
    assert restored_share(original, edited, original) == pytest.approx(moved.mean())  # all put back
    assert 0.3 < moved.mean() < 1  # the edit moved most pixels by more than the 8 levels counted


def test_the_seam_error_is_zero_for_the_truth_and_counts_only_the_band_around_the_edit():
    case = next(c for c in make_cases(20, seed=0) if c.edit == "colour")
    truth, original = case.ground_truth(), case.input_image()
    assert edits.seam_error(truth, case) == 0.0
    changed = np.abs(np.asarray(truth, dtype=int) - np.asarray(original, dtype=int)).max(-1) > 20
    far = np.asarray(truth).copy()
    far[~changed] = 255 - far[~changed]  # everything outside the edit changed...
    inside = np.asarray(truth).copy()
    inside[changed] = 0  # ...or only the edited region itself
    assert edits.seam_error(Image.fromarray(far), case) > 100  # the band lies outside the edit
    assert edits.seam_error(Image.fromarray(inside), case) == 0.0
