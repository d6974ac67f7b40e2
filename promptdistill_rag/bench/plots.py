"""PNG figures of benchmark results.

The figures are drawn on ``matplotlib.figure.Figure`` objects directly, not
through ``pyplot``, so no GUI backend is needed or changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import mean_by

__all__ = ["file_stem", "needle_heatmaps", "rag_bar_chart", "speed_chart"]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        msg = 'benchmark plots need matplotlib; install it with: pip install "promptdistill-rag[bench]"'
        raise ImportError(msg) from error
    return Figure


def file_stem(label: str) -> str:
    """Turn a run label such as ``"promptdistill@0.25"`` into a file-name part ``"promptdistill_keep0.25"``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("@", "_keep"))


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    labels: list[str] = []
    for row in rows:
        if row["label"] not in labels:
            labels.append(row["label"])
    return labels


def needle_heatmaps(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Draw one heatmap per method and budget: depth on x, context length on y, mean needle score as colour.

    Returns:
        The PNG paths, one per run label.
    """
    Figure = _figure_class()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lengths = sorted({row["context_tokens"] for row in rows})
    depths = sorted({row["depth"] for row in rows})
    means = mean_by(rows, ["label", "context_tokens", "depth"], "score")
    overall = mean_by(rows, ["label"], "score")
    paths = []
    for label in _labels(rows):
        grid = [[means.get((label, length, depth), float("nan")) for depth in depths] for length in lengths]
        figure = Figure(figsize=(1.1 * len(depths) + 2.5, 0.6 * len(lengths) + 2.0))
        axes = figure.add_subplot()
        image = axes.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
        axes.set_xticks(range(len(depths)), [f"{depth:g}" for depth in depths])
        axes.set_yticks(range(len(lengths)), [str(length) for length in lengths])
        axes.set_xlabel("needle depth (fraction of the context)")
        axes.set_ylabel("context length (tokens)")
        axes.set_title(f"{label}: mean score {overall[(label,)]:.2f}")
        for y, line in enumerate(grid):
            for x, value in enumerate(line):
                axes.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8)
        figure.colorbar(image, ax=axes, label="needle score")
        figure.tight_layout()
        path = folder / f"needle_heatmap_{file_stem(label)}.png"
        figure.savefig(path, dpi=110)
        paths.append(path)
    return paths


def rag_bar_chart(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """Draw accuracy per gold-passage position (groups) and method at each budget (bars).

    Returns:
        The PNG path.
    """
    Figure = _figure_class()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    order = ["first", "middle", "last"]
    positions = sorted({row["position"] for row in rows}, key=lambda name: order.index(name) if name in order else 99)
    labels = _labels(rows)
    means = mean_by(rows, ["label", "position"], "score")
    width = 0.8 / max(1, len(labels))
    bar_count = len(positions) * max(1, len(labels))
    figure = Figure(figsize=(max(6.0, 0.35 * bar_count + 2.0), 4.5))
    axes = figure.add_subplot()
    for number, label in enumerate(labels):
        xs = [index + (number - (len(labels) - 1) / 2) * width for index in range(len(positions))]
        axes.bar(xs, [means.get((label, position), 0.0) for position in positions], width, label=label)
    axes.set_xticks(range(len(positions)), [f"gold {position}" for position in positions])
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("accuracy")
    axes.set_title("RAG accuracy by gold passage position")
    axes.legend(fontsize=7, ncols=2)
    figure.tight_layout()
    path = folder / "rag_accuracy.png"
    figure.savefig(path, dpi=110)
    return path


def speed_chart(summary: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """Draw median prefill seconds against prompt tokens, one line per method and budget.

    Returns:
        The PNG path.
    """
    Figure = _figure_class()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for label in _labels(summary):
        points = sorted(
            (row["prompt_tokens"], row["prefill_seconds_median"]) for row in summary if row["label"] == label
        )
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    axes.set_xlabel("prompt tokens")
    axes.set_ylabel("prefill seconds (median)")
    axes.set_title("Time to first token")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = folder / "speed_prefill.png"
    figure.savefig(path, dpi=110)
    return path
