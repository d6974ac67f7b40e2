"""Smoke runs of every bench command and of calibrate on the real default model, at tiny sizes."""

from __future__ import annotations

import csv
import json

import pytest

from promptdistill_rag import DistillConfig
from promptdistill_rag.cli import main

pytestmark = pytest.mark.real_model


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_bench_needle_smoke(data_dir, tmp_path, capsys):
    argv = [
        "bench",
        "needle",
        "--haystack-dir",
        str(data_dir / "paul_graham_essays"),
        "--lengths",
        "300",
        "--depths",
        "0.5",
        "--keep",
        "0.5",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["method", "keep", "needle_score"]
    runs = read_csv(tmp_path / "needle.csv")
    assert [run["method"] for run in runs] == ["full", "promptdistill", "gemfilter", "snapkv", "h2o", "truncate"]
    # At 300 tokens the real model finds the needle without any selection.
    assert float(runs[0]["score"]) >= 0.75
    assert len(list(tmp_path.glob("needle_heatmap_*.png"))) == 6
    payload = json.loads((tmp_path / "needle.json").read_text())
    assert payload["meta"]["model"] == "SmolLM2-135M-Instruct"


def test_bench_rag_smoke(data_dir, tmp_path, capsys):
    argv = [
        "bench",
        "rag",
        "--data",
        str(data_dir / "nq_open" / "nq-open-oracle-dev.jsonl.gz"),
        "--questions",
        "2",
        "--distractors",
        "2",
        "--positions",
        "first",
        "--methods",
        "promptdistill",
        "truncate",
        "--keep",
        "0.5",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert "accuracy" in capsys.readouterr().out.splitlines()[0]
    runs = read_csv(tmp_path / "rag.csv")
    assert len(runs) == 2 * 3
    assert {run["position"] for run in runs} == {"first"}
    assert all(run["answers"] for run in runs)
    assert (tmp_path / "rag_accuracy.png").is_file()


def test_bench_speed_smoke(tmp_path, capsys):
    argv = [
        "bench",
        "speed",
        "--lengths",
        "300",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--decode-tokens",
        "2",
        "--methods",
        "promptdistill",
        "snapkv",
        "--keep",
        "0.5",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert "meas/ideal" in capsys.readouterr().out.splitlines()[0]
    payload = json.loads((tmp_path / "speed.json").read_text())
    by_method = {run["method"]: run for run in payload["runs"]}
    assert set(by_method) == {"full", "promptdistill", "snapkv"}
    assert by_method["promptdistill"]["selection_seconds"] > 0
    assert by_method["promptdistill"]["kv_cache_bytes"] < by_method["full"]["kv_cache_bytes"]
    assert all(entry["ideal_prefill_seconds"] > 0 for entry in payload["summary"]["configs"])
    assert (tmp_path / "speed_prefill.png").is_file()


def test_calibrate_smoke(tmp_path, capsys):
    argv = [
        "calibrate",
        "--lengths",
        "300",
        "--depths",
        "0.5",
        "--layers",
        "0.5",
        "0.7",
        "--keeps",
        "0.5",
        "--out",
        str(tmp_path),
    ]
    status = main(argv)
    out = capsys.readouterr().out
    assert status in (0, 1)
    assert "needle score" in out
    if status == 0:
        config = DistillConfig.model_validate_json(out.strip().splitlines()[-1])
        assert config.keep == (0.5,)
    assert len(read_csv(tmp_path / "calibrate.csv")) == 3
