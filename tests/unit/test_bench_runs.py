"""The benchmark grid runner, its result files, summaries and plots, on the tiny random-weight model."""

import csv
import gzip
import json
import math

import pytest

from promptdistill_rag import DistillConfig
from promptdistill_rag.bench.grid import check_cases, span_kept_share, text_token_span
from promptdistill_rag.bench.needle import DEFAULT_NEEDLE, load_haystack, needle_cases, run_needle
from promptdistill_rag.bench.plots import file_stem, needle_heatmaps, rag_bar_chart
from promptdistill_rag.bench.presets import bench_configs
from promptdistill_rag.bench.rag import QAItem, load_nq, rag_cases, run_rag
from promptdistill_rag.bench import report
from promptdistill_rag.bench.report import (
    RunStart,
    format_table,
    mean_by,
    quality_table,
    ratio,
    run_metadata,
    summarize_quality,
    write_runs,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def haystack():
    return load_haystack(None)


@pytest.fixture(scope="module")
def configs():
    # min_keep=1: the test prompts are shorter than the default min_keep.
    return bench_configs(
        ["promptdistill", "snapkv", "truncate"], [0.5], DistillConfig(selection_layers=[2], min_keep=1)
    )


@pytest.fixture(scope="module")
def needle_rows(llama_engine, configs, haystack):
    return run_needle(
        llama_engine,
        configs,
        lengths=[160, 220],
        depths=[0.0, 1.0],
        haystack=haystack,
        max_new_tokens=3,
        progress=False,
    )


def make_items(count):
    return [
        QAItem(
            question=f"Which town has landmark number {i}?",
            answers=(f"Town{i}",),
            title=f"Landmark {i}",
            passage=f"Landmark number {i} stands in Town{i}. It was built in {1800 + i} from local stone.",
        )
        for i in range(count)
    ]


def test_needle_rows_cover_grid(needle_rows, configs):
    assert len(needle_rows) == 2 * 2 * len(configs)
    cells = {(row["context_tokens"], row["depth"], row["label"]) for row in needle_rows}
    assert len(cells) == len(needle_rows)


def test_needle_rows_have_stats_and_answer(needle_rows):
    for row in needle_rows:
        assert 0.0 <= row["score"] <= 1.0
        assert isinstance(row["answer"], str)
        assert row["prompt_tokens"] <= row["context_tokens"]
        assert row["generated_tokens"] <= 3
        assert row["config"]["method"] == row["method"]
        assert row["prefill_seconds"] > 0


def test_needle_kept_share_by_method(needle_rows):
    for row in needle_rows:
        share = row["target_kept_share"]
        if row["method"] == "full":
            assert share == 1.0
        elif row["method"] == "snapkv":
            assert share is None
        else:
            assert 0.0 <= share <= 1.0


def test_promptdistill_rows_drop_tokens(needle_rows):
    rows = [row for row in needle_rows if row["method"] == "promptdistill"]
    assert rows
    for row in rows:
        assert row["kept_tokens"] == [math.ceil(0.5 * row["prompt_tokens"])]
        assert row["selection_layers"] == [2]


def test_needle_span_found(llama_engine, haystack):
    case = needle_cases(llama_engine.tokenizer, haystack, [200], [0.5])[0]
    prepared = llama_engine.prepare(case.generate_kwargs["prompt"], query=case.generate_kwargs["query"])
    start, end = text_token_span(prepared, DEFAULT_NEEDLE)
    text = llama_engine.tokenizer.decode(prepared.input_ids[start:end])
    assert DEFAULT_NEEDLE in text
    assert end - start < 40


def test_text_span_missing_is_none(llama_engine):
    prepared = llama_engine.prepare("short prompt")
    assert text_token_span(prepared, "not there") is None


def test_span_kept_share_counts():
    assert span_kept_share((2, 6), [0, 2, 3, 9], "promptdistill") == 0.5
    assert span_kept_share((2, 6), None, "h2o") is None
    assert span_kept_share((2, 6), None, "full") == 1.0
    assert span_kept_share(None, [1], "truncate") is None


def test_lengths_over_limit_rejected(llama_engine, configs, haystack):
    with pytest.raises(ValueError, match="exceeds the model's 2048 positions"):
        run_needle(llama_engine, configs, lengths=[2040], depths=[0.5], haystack=haystack, max_new_tokens=16)


def test_budget_checked_before_running(llama_engine, haystack):
    tight = bench_configs(["promptdistill"], [3], DistillConfig(selection_layers=[2]))
    cases = needle_cases(llama_engine.tokenizer, haystack, [200], [0.5])
    with pytest.raises(ValueError, match="promptdistill@3 cannot run"):
        check_cases(llama_engine, cases, tight, max_new_tokens=4)


def test_keywords_must_be_in_needle(llama_engine, haystack):
    with pytest.raises(ValueError, match="do not occur"):
        needle_cases(llama_engine.tokenizer, haystack, [200], [0.5], keywords=["pizza"])


def test_bad_depth_rejected(llama_engine, haystack):
    with pytest.raises(ValueError, match="depth"):
        needle_cases(llama_engine.tokenizer, haystack, [200], [1.5])


def test_rag_cases_positions():
    items = make_items(8)
    cases = rag_cases(items, questions=2, offset=3, distractors=4, positions=["first", "middle", "last"])
    assert [(case.params["question_index"], case.params["position"]) for case in cases] == [
        (3, "first"),
        (3, "middle"),
        (3, "last"),
        (4, "first"),
        (4, "middle"),
        (4, "last"),
    ]
    assert [case.params["gold_index"] for case in cases[:3]] == [0, 2, 4]
    for case in cases:
        chunks = case.generate_kwargs["chunks"]
        assert len(chunks) == 5
        gold = items[case.params["question_index"]].passage
        assert gold in chunks[case.params["gold_index"]]
        assert case.score(f"It is {items[case.params['question_index']].answers[0]}.") == 1.0
        assert case.score("I do not know.") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"questions": 0}, "--questions"),
        ({"questions": 5, "offset": 4}, "needs 9 items"),
        ({"questions": 1, "offset": -1}, "--offset"),
        ({"questions": 1, "distractors": -2}, "--distractors"),
        ({"questions": 1, "positions": ["centre"]}, "--positions"),
        ({"questions": 1, "positions": []}, "--positions"),
        ({"questions": 1, "distractors": 8}, "9 items"),
    ],
)
def test_rag_cases_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rag_cases(make_items(8), **kwargs)


def test_run_rag_rows(llama_engine, configs):
    rows = run_rag(
        llama_engine,
        configs,
        items=make_items(6),
        questions=1,
        distractors=3,
        positions=["first", "last"],
        max_new_tokens=2,
        progress=False,
    )
    assert len(rows) == 2 * len(configs)
    for row in rows:
        assert row["score"] in (0.0, 1.0)
        assert row["answers"] == ["Town0"]
        assert row["question"].startswith("Which town")
    truncated = [row for row in rows if row["method"] == "truncate"]
    # Truncation drops the lowest-ranked (last) chunks first, so the gold passage survives in first place.
    first = next(row for row in truncated if row["position"] == "first")
    assert first["target_kept_share"] == 1.0


def test_load_nq_reads_gzip(tmp_path):
    path = tmp_path / "nq.jsonl.gz"
    records = [
        {"question": "q1", "answers": ["a1"], "ctxs": [{"title": "t1", "text": "p1"}]},
        {"question": "q2", "answers": ["a2", "b2"], "ctxs": [{"title": "t2", "text": "p2"}]},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(record) for record in records) + "\n")
    items = load_nq(path)
    assert [item.question for item in items] == ["q1", "q2"]
    assert items[1].answers == ("a2", "b2")
    assert load_nq(path, limit=1)[0].passage == "p1"


def test_load_nq_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_nq(tmp_path / "absent.jsonl.gz")


def test_load_nq_bad_line(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "ctxs": []}) + "\n")
    with pytest.raises(ValueError, match="nq.jsonl:1"):
        load_nq(path)


def test_write_runs_json_and_csv(tmp_path, needle_rows):
    summary = summarize_quality(needle_rows, "needle_score")
    json_path, csv_path = write_runs(tmp_path, "needle", {"command": "bench needle"}, needle_rows, summary)
    payload = json.loads(json_path.read_text())
    assert payload["meta"]["command"] == "bench needle"
    assert len(payload["runs"]) == len(needle_rows)
    assert payload["runs"][1]["kept_indices"] == needle_rows[1]["kept_indices"]
    assert payload["summary"][0]["label"] == "full"
    with csv_path.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(needle_rows)
    assert "kept_indices" not in table[0]
    for column in (
        "context_tokens",
        "depth",
        "method",
        "keep",
        "answer",
        "score",
        "prefill_seconds",
        "kv_cache_bytes",
        "config",
    ):
        assert column in table[0]
    assert table[0]["answer"] == needle_rows[0]["answer"]
    assert json.loads(table[0]["config"])["method"] == "full"
    assert json.loads(table[0]["kept_tokens"]) == needle_rows[0]["kept_tokens"]


def summary_row(label, score, prefill_seconds, position):
    method = label.split("@")[0]
    return {
        "label": label,
        "method": method,
        "keep": label.partition("@")[2],
        "score": score,
        "prefill_seconds": prefill_seconds,
        "kv_cache_bytes": 100 if method == "full" else 50,
        "target_kept_share": 1.0 if method == "full" else None,
        "position": position,
    }


def test_summary_ratios_to_full():
    rows = [
        summary_row("full", 1.0, 2.0, "first"),
        summary_row("full", 0.5, 4.0, "last"),
        summary_row("snapkv@0.5", 0.5, 3.0, "first"),
        summary_row("snapkv@0.5", 0.0, 3.0, "last"),
    ]

    full, snapkv = summarize_quality(rows, "accuracy", split="position")

    assert full["accuracy"] == 0.75
    assert full["accuracy_vs_full"] == 1.0
    assert snapkv["accuracy"] == 0.25
    assert snapkv["accuracy_vs_full"] == pytest.approx(1 / 3)
    assert snapkv["prefill_vs_full"] == 1.0
    assert snapkv["kv_cache_vs_full"] == 0.5
    assert snapkv["target_kept_share"] is None
    assert snapkv["accuracy_position_first"] == 0.5
    assert snapkv["accuracy_position_last"] == 0.0
    assert snapkv["runs"] == 2

    table = quality_table([full, snapkv], "accuracy", ["accuracy_position_first", "accuracy_position_last"])
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["method", "keep", "accuracy", "position_first", "position_last"]
    assert "0.33x" in lines[3]
    assert "n/a" in lines[3]


def test_ratio_edge_cases():
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(math.nan, 1.0) is None
    assert ratio(3.0, 2.0) == 1.5


def test_mean_by_skips_missing_values():
    rows = [{"k": "a", "v": 1.0}, {"k": "a", "v": None}, {"k": "b", "v": None}, {"k": "a", "v": 3.0}]
    means = mean_by(rows, ["k"], "v")
    assert means[("a",)] == 2.0
    assert math.isnan(means[("b",)])
    assert list(means) == [("a",), ("b",)]


def test_format_table_aligns_numbers():
    table = format_table(["name", "value"], [["a", "1.5"], ["long name", "12.25"]])
    lines = table.splitlines()
    assert lines[1].startswith("---------")
    assert lines[2].endswith("  1.5")
    assert lines[3].endswith("12.25")


def test_needle_heatmaps_written(tmp_path, needle_rows):
    paths = needle_heatmaps(needle_rows, tmp_path)
    labels = list(dict.fromkeys(row["label"] for row in needle_rows))
    assert [path.name for path in paths] == [f"needle_heatmap_{file_stem(label)}.png" for label in labels]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_rag_bar_chart_written(tmp_path):
    rows = [
        {"label": label, "position": position, "score": score}
        for label, score in (("full", 1.0), ("truncate@0.5", 0.0))
        for position in ("last", "first")
    ]
    path = rag_bar_chart(rows, tmp_path)
    assert path.name == "rag_accuracy.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_file_stem_is_safe():
    assert file_stem("promptdistill@0.25/L12") == "promptdistill_keep0.25_L12"


def test_metadata_records_commit_at_start(monkeypatch, llama_engine):
    # A long run's checkout may move on; the metadata names the code that ran.
    answers = iter(["abc123", " M promptdistill_rag/config.py"])
    monkeypatch.setattr(report, "_git", lambda *args: next(answers))
    start = RunStart.now()
    monkeypatch.setattr(report, "_git", lambda *args: "def456")

    meta = run_metadata(llama_engine, "bench needle", {}, started=start)

    assert meta["versions"]["git_commit"] == "abc123"
    assert meta["versions"]["git_dirty"] is True
    assert meta["started_at"] == start.started_at


def test_metadata_outside_checkout(monkeypatch, llama_engine):
    monkeypatch.setattr(report, "_git", lambda *args: None)
    meta = run_metadata(llama_engine, "bench rag", {})
    assert meta["versions"]["git_commit"] is None
    assert meta["versions"]["git_dirty"] is None
