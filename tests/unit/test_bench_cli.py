"""The bench and calibrate subcommands on the tiny model: argument errors, output files and tables."""

import csv
import gzip
import json

import pytest

from promptdistill_rag import DistillConfig, cli
from promptdistill_rag.bench import models
from promptdistill_rag.calibrate import calibrate, calibration_configs, calibration_table


@pytest.fixture
def tiny_loader(monkeypatch, llama_engine):
    """Make every bench command run on the tiny model instead of loading one."""
    monkeypatch.setattr(models, "load_engine", lambda model: llama_engine)
    return llama_engine


@pytest.fixture
def nq_file(tmp_path):
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(6):
            record = {
                "question": f"Which town has landmark number {i}?",
                "answers": [f"Town{i}"],
                "ctxs": [{"title": f"Landmark {i}", "text": f"Landmark number {i} stands in Town{i}."}],
            }
            handle.write(json.dumps(record) + "\n")
    return path


def run_cli(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_bad_method_name_exits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "needle", "--methods", "streamingllm"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'streamingllm'" in capsys.readouterr().err


def test_bad_budget_text_exits(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "needle", "--keep", "half"])
    assert "expected an int or a float, got 'half'" in capsys.readouterr().err


def test_out_of_range_budget_reported(tiny_loader, tmp_path, capsys):
    status, _, err = run_cli(["bench", "needle", "--keep", "1.5", "--out", str(tmp_path)], capsys)
    assert status == 2
    assert "invalid budget --keep 1.5" in err


def test_needle_lengths_over_limit_reported(tiny_loader, tmp_path, capsys):
    status, _, err = run_cli(["bench", "needle", "--lengths", "4096", "--out", str(tmp_path)], capsys)
    assert status == 2
    assert "--lengths 4096" in err
    assert "2048 positions" in err


def test_missing_data_file_reported(tmp_path, capsys):
    status, _, err = run_cli(
        ["bench", "rag", "--data", str(tmp_path / "absent.jsonl.gz"), "--out", str(tmp_path)], capsys
    )
    assert status == 2
    assert "absent.jsonl.gz not found" in err


def test_rag_requires_data(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "rag"])
    assert "--data" in capsys.readouterr().err


def test_missing_haystack_dir_reported(tmp_path, capsys):
    status, _, err = run_cli(
        ["bench", "needle", "--haystack-dir", str(tmp_path / "none"), "--out", str(tmp_path)], capsys
    )
    assert status == 2
    assert "is not a folder" in err


def test_empty_haystack_dir_reported(tiny_loader, tmp_path, capsys):
    status, _, err = run_cli(["bench", "needle", "--haystack-dir", str(tmp_path), "--out", str(tmp_path)], capsys)
    assert status == 2
    assert "no .txt files" in err


def test_changed_needle_needs_keywords(tmp_path, capsys):
    status, _, err = run_cli(["bench", "needle", "--needle", "The code is 42.", "--out", str(tmp_path)], capsys)
    assert status == 2
    assert "--keywords" in err


def test_config_json_needs_random_weights(tmp_path, capsys):
    status, _, err = run_cli(["bench", "speed", "--config-json", "config.json", "--out", str(tmp_path)], capsys)
    assert status == 2
    assert "--random-weights" in err


def test_needle_command_writes_files(tiny_loader, tmp_path, capsys):
    argv = [
        "bench",
        "needle",
        "--methods",
        "promptdistill",
        "truncate",
        "--keep",
        "0.5",
        "100",
        "--lengths",
        "180",
        "--depths",
        "0.5",
        "--max-new-tokens",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    status, out, _ = run_cli(argv, capsys)
    assert status == 0

    header = out.splitlines()[0]
    assert "needle_score" in header
    assert "vs full" in header
    labels = [line.split()[0] + "@" + line.split()[1] for line in out.splitlines()[2:]]
    assert labels == ["full@-", "promptdistill@0.5", "promptdistill@100", "truncate@0.5", "truncate@100"]

    payload = json.loads((tmp_path / "needle.json").read_text())
    assert payload["meta"]["command"] == "bench needle"
    assert payload["meta"]["settings"]["lengths"] == [180]
    assert payload["meta"]["num_layers"] == tiny_loader.num_layers
    assert len(payload["runs"]) == 5
    with (tmp_path / "needle.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 5

    heatmaps = sorted(path.name for path in tmp_path.glob("needle_heatmap_*.png"))
    assert len(heatmaps) == 5
    assert "needle_heatmap_promptdistill_keep100.png" in heatmaps


def test_rag_command_writes_files(tiny_loader, nq_file, tmp_path, capsys):
    argv = [
        "bench",
        "rag",
        "--data",
        str(nq_file),
        "--methods",
        "snapkv",
        "--keep",
        "0.5",
        "--questions",
        "2",
        "--distractors",
        "2",
        "--positions",
        "first",
        "last",
        "--max-new-tokens",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    assert out.splitlines()[0].split()[:5] == ["method", "keep", "accuracy", "position_first", "position_last"]
    payload = json.loads((tmp_path / "rag.json").read_text())
    assert len(payload["runs"]) == 2 * 2 * 2
    assert {run["position"] for run in payload["runs"]} == {"first", "last"}
    assert (tmp_path / "rag_accuracy.png").is_file()
    assert (tmp_path / "rag.csv").is_file()


def test_speed_command_writes_files(tiny_loader, tmp_path, capsys, caplog):
    argv = [
        "bench",
        "speed",
        "--methods",
        "promptdistill",
        "--keep",
        "0.5",
        "--lengths",
        "150",
        "5000",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--decode-tokens",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    assert "measuring 2046 instead" in caplog.text
    lines = out.splitlines()
    assert "meas/ideal" in lines[0]
    assert len(lines) == 2 + 2 * 2
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert {run["length"] for run in payload["runs"]} == {150, 2046}
    assert payload["summary"]["layer_costs"]
    assert (tmp_path / "speed_prefill.png").is_file()


def test_calibrate_command_prints_config(tiny_loader, tmp_path, capsys):
    argv = [
        "calibrate",
        "--lengths",
        "180",
        "--depths",
        "0.5",
        "--layers",
        "0.4",
        "3",
        "--keeps",
        "0.5",
        "0.25",
        "--max-new-tokens",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    status, out, _ = run_cli(argv, capsys)
    # The random model never finds the needle, so the full model scores 0 and every candidate passes.
    assert status == 0
    config = DistillConfig.model_validate_json(out.strip().splitlines()[-1])
    assert config.selection_layers == (2,)
    assert config.keep == (0.25,)
    assert "<- recommended" in out
    assert (tmp_path / "calibrate.json").is_file()


def fake_needle_rows(scores, prompt_tokens=1000):
    def run_needle(engine, configs, **kwargs):
        return [
            {"label": config.label, "score": scores[config.label], "prompt_tokens": prompt_tokens} for config in configs
        ]

    return run_needle


def test_calibrate_earliest_layer_smallest_keep(monkeypatch, llama_engine):
    scores = {
        "full": 1.0,
        "promptdistill@0.5/L1": 0.5,
        "promptdistill@0.25/L1": 0.75,
        "promptdistill@0.5/L2": 1.0,
        "promptdistill@0.25/L2": 1.0,
        "promptdistill@0.5/L3": 1.0,
        "promptdistill@0.25/L3": 1.0,
    }
    monkeypatch.setattr("promptdistill_rag.calibrate.run_needle", fake_needle_rows(scores))
    result = calibrate(llama_engine, haystack="", layers=[1, 2, 3], keeps=[0.5, 0.25])
    assert result.recommended.selection_layers == (2,)
    assert result.recommended.keep == (0.25,)
    assert [entry["passes"] for entry in result.table] == [False, False, True, True, True, True]
    assert "<- recommended" in calibration_table(result).splitlines()[6]


def test_calibrate_tolerance_admits_near_scores(monkeypatch, llama_engine):
    scores = {"full": 1.0, "promptdistill@0.5/L1": 0.8, "promptdistill@0.5/L2": 1.0}
    monkeypatch.setattr("promptdistill_rag.calibrate.run_needle", fake_needle_rows(scores))
    strict = calibrate(llama_engine, haystack="", layers=[1, 2], keeps=[0.5])
    loose = calibrate(llama_engine, haystack="", layers=[1, 2], keeps=[0.5], tolerance=0.25)
    assert strict.recommended.selection_layers == (2,)
    assert loose.recommended.selection_layers == (1,)


def test_calibrate_none_passing(monkeypatch, llama_engine):
    scores = {"full": 1.0, "promptdistill@0.5/L1": 0.0}
    monkeypatch.setattr("promptdistill_rag.calibrate.run_needle", fake_needle_rows(scores))
    result = calibrate(llama_engine, haystack="", layers=[1], keeps=[0.5])
    assert result.recommended is None
    assert "recommended" not in calibration_table(result)


def test_calibrate_command_fails_when_none_pass(monkeypatch, tiny_loader, tmp_path, capsys):
    scores = {"full": 1.0, "promptdistill@0.5/L1": 0.0}
    monkeypatch.setattr("promptdistill_rag.calibrate.run_needle", fake_needle_rows(scores))
    status, out, err = run_cli(["calibrate", "--layers", "1", "--keeps", "0.5", "--out", str(tmp_path)], capsys)
    assert status == 1
    assert "no candidate reached" in err
    assert "{" not in out


def test_calibration_configs_merge_duplicate_layers(llama_engine):
    configs = calibration_configs(llama_engine, [0.3, 2, 0.5], [0.5])
    # 0.3 of 6 layers rounds to layer 2, the same as the explicit index.
    assert [config.label for config in configs] == ["full", "promptdistill@0.5/L2", "promptdistill@0.5/L3"]


@pytest.mark.parametrize(
    ("layers", "keeps", "match"),
    [([], [0.5], "at least one"), ([9], [0.5], "outside the model's layers"), ([2], [2.5], "invalid --keeps")],
)
def test_calibration_configs_reject(llama_engine, layers, keeps, match):
    with pytest.raises(ValueError, match=match):
        calibration_configs(llama_engine, layers, keeps)


def test_calibrate_negative_tolerance(llama_engine):
    with pytest.raises(ValueError, match="--tolerance"):
        calibrate(llama_engine, haystack="", tolerance=-0.1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("paper", "must look like NAME=JSON"),
        (" ={}", "must look like NAME=JSON"),
        ('paper={"selector": ', "--variant paper: invalid JSON"),
        ("paper=[1, 2]", "--variant paper: expected a JSON object"),
    ],
)
def test_bad_variant_reported(tiny_loader, tmp_path, capsys, spec, message):
    status, _, err = run_cli(["bench", "needle", "--variant", spec, "--out", str(tmp_path)], capsys)
    assert status == 2
    assert message in err


def test_repeated_variant_name_reported(tiny_loader, tmp_path, capsys):
    argv = ["bench", "needle", "--variant", "late={}", "--variant", " late ={}", "--out", str(tmp_path)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert "--variant late is given twice" in err


@pytest.mark.parametrize(("text", "message"), [("{", "--base: invalid JSON"), ('"query"', "--base: expected a JSON object")])
def test_bad_calibrate_base_reported(tiny_loader, tmp_path, capsys, text, message):
    status, _, err = run_cli(["calibrate", "--base", text, "--out", str(tmp_path)], capsys)
    assert status == 2
    assert message in err
