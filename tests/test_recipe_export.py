"""``recipes/export.py``: the training log shipped beside pretrained weights is thinned
without changing what is read from it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from genmnist.metrics.stability import training_time
from genmnist.run_folder import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _export_module():
    spec = importlib.util.spec_from_file_location("export", REPO / "recipes" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resumed_log(segments: list[int]) -> list[dict]:
    """A log of runs resumed ``len(segments)`` times, each clock restarting at 0."""
    records, step = [], 0
    for length in segments:
        for i in range(length):
            step += 1
            records.append({"step": step, "loss": 1.0 / step, "time": 0.5 * (i + 1)})
    return records


def test_thinned_log_keeps_shape_first_last_and_training_time():
    thinned_log = _export_module().thinned_log
    records = _resumed_log([1000, 7, 1500, 400])
    kept = thinned_log(records, most=100)
    assert len(kept) <= 100 + 2 * 3  # the evenly spaced records and each resume
    assert kept[0] == records[0] and kept[-1] == records[-1]
    assert [r["step"] for r in kept] == sorted({r["step"] for r in kept})
    assert training_time(kept) == training_time(records)
    steps = [r["step"] for r in kept]
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) <= len(records) / 100 + 1


def test_a_short_log_is_shipped_whole():
    records = _resumed_log([50])
    assert _export_module().thinned_log(records, most=100) == records


def test_shipped_logs_are_thinned():
    most = _export_module().SHIPPED_LOG_RECORDS
    for log in (REPO / "src" / "genmnist" / "pretrained").glob("*/*/metrics.jsonl"):
        records = read_metrics(log)
        assert len(records) <= most + 10, f"{log}: re-export it (recipes/export.py)"
        assert all(json.loads(line) for line in log.read_text().splitlines())


def test_only_runs_that_continued_another_need_a_teacher():
    continues_nothing = _export_module().continues_nothing
    assert continues_nothing("auxiliary-classifier")  # an objective: trained from scratch
    for task in ("guidance-distillation", "reflow", "adversarial-decoder"):
        assert not continues_nothing(task), task


def test_a_shipped_teacher_gives_the_training_record_on_its_card(tmp_path):
    shipped_training_record = _export_module().shipped_training_record
    main = {"command": "genmnist train ddpm-cfg", "steps": 1872, "seed": 42}
    card = {"training": {**main, "distillation": {"steps": 1}, "fine_tuning": {"steps": 2}}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    # the record of what continued the teacher is the new run's; the rest made its weights
    assert shipped_training_record(tmp_path, replaced="distillation") == {
        **main,
        "fine_tuning": {"steps": 2},
    }
    tuned = shipped_training_record(tmp_path, replaced="fine_tuning")
    assert tuned == {**main, "distillation": {"steps": 1}}
    with pytest.raises(SystemExit, match="no card"):
        shipped_training_record(tmp_path / "elsewhere", replaced="distillation")
