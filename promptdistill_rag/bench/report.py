"""Result files and tables: JSON and CSV of every run, summaries with ratios to ``full``."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RunStart",
    "format_ratio",
    "format_table",
    "mean_by",
    "ratio",
    "quality_table",
    "run_metadata",
    "summarize_quality",
    "write_runs",
]

# Per-token lists that would make every CSV row thousands of cells long; the JSON keeps them.
_JSON_ONLY = ("kept_indices",)


def _git(*args: str) -> str | None:
    # Only a source checkout has a repository; an installed package returns None.
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip()


@dataclass(frozen=True)
class RunStart:
    """The moment a benchmark started, with the code it runs.

    The commit is read at the start because a run may last an hour, and the
    checkout can change meanwhile while the process keeps the code it imported.

    Attributes:
        clock: ``time.perf_counter()`` at the start, for the elapsed time.
        started_at: UTC start time, ISO 8601.
        git_commit: The checkout's HEAD, or None outside a git checkout.
        git_dirty: Whether tracked files differed from HEAD; None outside a checkout.
    """

    clock: float
    started_at: str
    git_commit: str | None
    git_dirty: bool | None

    @classmethod
    def now(cls) -> RunStart:
        """Record the current time and the checkout's state."""
        commit = _git("rev-parse", "HEAD") or None
        status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
        return cls(
            clock=time.perf_counter(),
            started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            git_commit=commit,
            git_dirty=None if status is None else bool(status),
        )


def run_metadata(engine, command: str, settings: dict[str, Any], started: RunStart | None = None) -> dict[str, Any]:
    """Describe a benchmark run: the command, its settings, the model, the machine and the software versions.

    ``started`` (default: now) gives the start time and the commit that ran.
    """
    started = started or RunStart.now()
    import torch
    import transformers

    from .. import __version__
    from .presets import distill_base

    model = engine.model
    device = engine.runner.input_device
    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return {
        "command": command,
        "settings": settings,
        "model": engine.model_name,
        "model_type": model.config.model_type,
        "num_layers": engine.num_layers,
        "max_positions": engine.max_positions,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(device),
        "promptdistill_base_config": distill_base(engine).model_dump(),
        "machine": machine,
        "versions": {
            "promptdistill_rag": __version__,
            "git_commit": started.git_commit,
            "git_dirty": started.git_dirty,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "started_at": started.started_at,
    }


def _csv_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if value is None:
        return ""
    return value


def write_runs(
    out_dir: str | Path,
    name: str,
    meta: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    summary: Any,
) -> tuple[Path, Path]:
    """Write ``name.json`` (metadata, summary and every run) and ``name.csv`` (one row per run).

    ``summary`` is anything JSON can encode.

    The CSV leaves out ``kept_indices`` (one entry per kept token); lists and
    dicts in it are JSON-encoded.

    Returns:
        The JSON and CSV paths.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{name}.json"
    csv_path = folder / f"{name}.csv"
    payload = {"meta": meta, "summary": summary, "runs": list(rows)}
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns and key not in _JSON_ONLY:
                columns.append(key)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in columns})
    return json_path, csv_path


def mean_by(rows: Iterable[dict[str, Any]], keys: Sequence[str], value: str) -> dict[tuple, float]:
    """Return the mean of ``row[value]`` for each distinct tuple of ``row[key]``, in first-seen order.

    Rows whose value is None are skipped; a group with no values maps to NaN.
    """
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        group = tuple(row[key] for key in keys)
        values = groups.setdefault(group, [])
        if row.get(value) is not None:
            values.append(float(row[value]))
    return {group: statistics.fmean(values) if values else math.nan for group, values in groups.items()}


def ratio(value: float | None, reference: float | None) -> float | None:
    """Return ``value / reference``, or None when either is missing or the reference is zero."""
    if value is None or reference is None or math.isnan(value) or math.isnan(reference) or reference == 0:
        return None
    return value / reference


def format_ratio(value: float | None) -> str:
    """Format a ratio as ``"0.85x"``, or ``"n/a"`` when there is none."""
    return "n/a" if value is None else f"{value:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a plain-text table with aligned columns (numbers right-aligned)."""
    cells = [[str(header) for header in headers]] + [
        ["" if cell is None else str(cell) for cell in row] for row in rows
    ]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    numeric = [
        all(_looks_numeric(row[index]) for row in cells[1:] if row[index]) and len(cells) > 1
        for index in range(len(headers))
    ]
    lines = []
    for number, row in enumerate(cells):
        parts = [
            cell.rjust(width) if numeric[i] else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    return text == "n/a" or text[:1].isdigit() or (text[:1] == "-" and text[1:2].isdigit())


def summarize_quality(rows: Sequence[dict[str, Any]], figure: str, split: str | None = None) -> list[dict[str, Any]]:
    """Summarize score, prefill time and KV cache size per method and budget, each with its ratio to ``full``.

    Args:
        rows: Result rows of ``run_grid``.
        figure: The name of the score in the summary (``"needle_score"``, ``"accuracy"``).
        split: A row key (such as ``"position"``) whose values get a mean score each.

    Returns:
        One dict per run label, ``full`` first.
    """
    scores = mean_by(rows, ["label"], "score")
    prefill = mean_by(rows, ["label"], "prefill_seconds")
    cache = mean_by(rows, ["label"], "kv_cache_bytes")
    kept = mean_by(rows, ["label"], "target_kept_share")
    counts: dict[str, int] = {}
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
        first.setdefault(row["label"], row)
    split_means = mean_by(rows, ["label", split], "score") if split else {}
    split_values = list(dict.fromkeys(row[split] for row in rows)) if split else []
    reference = ("full",)
    summary = []
    for (label,), score in scores.items():
        entry: dict[str, Any] = {
            "label": label,
            "method": first[label]["method"],
            "variant": first[label].get("variant", ""),
            "keep": first[label]["keep"],
            "runs": counts[label],
            figure: score,
            f"{figure}_vs_full": ratio(score, scores.get(reference)),
            "prefill_seconds": prefill[(label,)],
            "prefill_vs_full": ratio(prefill[(label,)], prefill.get(reference)),
            "kv_cache_bytes": cache[(label,)],
            "kv_cache_vs_full": ratio(cache[(label,)], cache.get(reference)),
            "target_kept_share": None if math.isnan(kept[(label,)]) else kept[(label,)],
        }
        for value in split_values:
            entry[f"{figure}_{split}_{value}"] = split_means.get((label, value))
        summary.append(entry)
    return summary


def quality_table(summary: Sequence[dict[str, Any]], figure: str, split_columns: Sequence[str] = ()) -> str:
    """Format ``summarize_quality`` output: the score, each split's score and the ratios to ``full``."""
    headers = ["method", "keep", figure, *[column.removeprefix(f"{figure}_") for column in split_columns], "vs full"]
    headers += ["prefill s", "vs full", "KV MiB", "vs full", "target kept"]
    lines = []
    for entry in summary:
        kept = entry["target_kept_share"]
        method = entry["method"] + (f"/{entry['variant']}" if entry.get("variant") else "")
        lines.append(
            [
                method,
                entry["keep"] or "-",
                f"{entry[figure]:.3f}",
                *[f"{entry[column]:.3f}" for column in split_columns],
                format_ratio(entry[f"{figure}_vs_full"]),
                f"{entry['prefill_seconds']:.2f}",
                format_ratio(entry["prefill_vs_full"]),
                f"{entry['kv_cache_bytes'] / 2**20:.1f}",
                format_ratio(entry["kv_cache_vs_full"]),
                "n/a" if kept is None else f"{kept:.0%}",
            ]
        )
    return format_table(headers, lines)
