"""Find the earliest selection layer and smallest budget at which PromptDistill still finds the needle.

A short Needle-in-a-Haystack sweep runs the full model and PromptDistill at
every candidate layer and budget on the same prompts. A candidate passes when
its mean needle score reaches the full model's (less a tolerance). The
recommendation is the earliest layer with a passing budget, at the smallest
passing budget there. Earlier layers and smaller budgets both make prefill cheaper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .bench.needle import DEFAULT_KEYWORDS, DEFAULT_NEEDLE, DEFAULT_QUESTION, run_needle
from .bench.presets import BenchConfig, distill_base, format_keep
from .bench.report import format_table, mean_by
from .config import DistillConfig, FullConfig, KeepSpec, LayerSpec, resolve_keep, resolve_layer

__all__ = [
    "DEFAULT_DEPTHS",
    "DEFAULT_KEEPS",
    "DEFAULT_LAYERS",
    "DEFAULT_LENGTHS",
    "Calibration",
    "calibrate",
    "calibration_configs",
    "calibration_table",
]

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS: tuple[int, ...] = (2048,)
DEFAULT_DEPTHS: tuple[float, ...] = (0.1, 0.5, 0.9)
DEFAULT_LAYERS: tuple[LayerSpec, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_KEEPS: tuple[KeepSpec, ...] = (0.5, 0.25, 0.15)


@dataclass(frozen=True)
class Calibration:
    """The outcome of a calibration sweep.

    Attributes:
        full_score: The full model's mean needle score on the sweep's cases.
        table: One entry per candidate, layers ascending, budgets in the given order:
            ``layer``, ``keep``, ``score``, ``passes`` and ``estimated_prefill_share``
            (the ideal prefill time as a share of the full model's).
        recommended: The recommended config, or None when no candidate passes.
        rows: Every run, as ``run_grid`` returns them.
    """

    full_score: float
    table: list[dict[str, Any]]
    recommended: DistillConfig | None
    rows: list[dict[str, Any]]


def calibration_configs(
    engine, layers: Sequence[LayerSpec], keeps: Sequence[KeepSpec], base: DistillConfig | None = None
) -> list[BenchConfig]:
    """Build ``full`` and one single-stage PromptDistill config per distinct layer and budget.

    The other fields come from ``base``, else the engine's default
    ``DistillConfig``. Layers are resolved to indices, so fractions that round
    to the same layer run once.

    Raises:
        ValueError: For a layer outside the model, an invalid budget, or empty lists.
    """
    if not layers or not keeps:
        msg = "calibration needs at least one --layers value and one --keeps value"
        raise ValueError(msg)
    base = (base if base is not None else distill_base(engine)).model_dump()
    indices = sorted({resolve_layer(layer, engine.num_layers, "--layers") for layer in layers})
    configs = [BenchConfig(method="full", keep=None, config=FullConfig())]
    for index in indices:
        for keep in keeps:
            try:
                config = DistillConfig.model_validate({**base, "selection_layers": (index,), "keep": (keep,)})
            except ValueError as error:
                msg = f"invalid --keeps value {keep!r}: {error}"
                raise ValueError(msg) from error
            configs.append(BenchConfig(method="promptdistill", keep=keep, config=config, variant=f"L{index}"))
    return configs


def _prefill_share(layer: int, keep: KeepSpec, prompt_tokens: float, num_layers: int) -> float:
    kept = min(prompt_tokens, resolve_keep(keep, math.ceil(prompt_tokens)))
    # Attention makes a layer's cost grow faster than linearly, so this
    # linear estimate overstates the cost of the layers after selection.
    return ((layer + 1) + (num_layers - layer - 1) * kept / prompt_tokens) / num_layers


def calibrate(
    engine,
    *,
    haystack: str,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    layers: Sequence[LayerSpec] = DEFAULT_LAYERS,
    keeps: Sequence[KeepSpec] = DEFAULT_KEEPS,
    tolerance: float = 0.0,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    max_new_tokens: int = 32,
    progress: bool = True,
    base: DistillConfig | None = None,
) -> Calibration:
    """Run the sweep and pick the recommended config.

    Args:
        engine: The engine whose model is calibrated.
        haystack: Text around the needle.
        lengths: Context lengths in tokens.
        depths: Needle depths, fractions of the context.
        layers: Candidate selection layers (indices or fractions of the depth).
        keeps: Candidate budgets (token counts or fractions of the prompt).
        tolerance: How far below the full model's mean score a candidate may
            fall and still pass.
        needle, question, keywords: The hidden fact, the question about it and
            the words a correct answer contains.
        max_new_tokens: Tokens generated per answer.
        progress: Show a progress bar on stderr.
        base: The config whose other fields (selector, granularity, ...) every
            candidate keeps; defaults to the engine's default ``DistillConfig``.

    Raises:
        ValueError: On invalid layers, budgets, lengths or depths, or a negative tolerance.
    """
    if not tolerance >= 0.0:
        msg = f"--tolerance must be 0 or more, got {tolerance}"
        raise ValueError(msg)
    configs = calibration_configs(engine, layers, keeps, base)
    rows = run_needle(
        engine,
        configs,
        lengths=lengths,
        depths=depths,
        haystack=haystack,
        needle=needle,
        question=question,
        keywords=keywords,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    scores = mean_by(rows, ["label"], "score")
    prompt_tokens = mean_by(rows, ["label"], "prompt_tokens")
    full_score = scores[("full",)]
    if full_score == 0.0:
        logger.warning(
            "the full model scores 0 on these needle cases, so every candidate matches it; "
            "use shorter --lengths or check the needle and keywords"
        )
    table = []
    for config in configs[1:]:
        layer = config.config.selection_layers[0]
        score = scores[(config.label,)]
        table.append(
            {
                "label": config.label,
                "layer": layer,
                "keep": config.keep,
                "score": score,
                "passes": score >= full_score - tolerance - 1e-9,
                "estimated_prefill_share": _prefill_share(
                    layer, config.keep, prompt_tokens[(config.label,)], engine.num_layers
                ),
                "config": config.config,
            }
        )
    passing = [entry for entry in table if entry["passes"]]
    recommended = None
    if passing:
        earliest = min(entry["layer"] for entry in passing)
        at_layer = [entry for entry in passing if entry["layer"] == earliest]
        tokens = prompt_tokens[("full",)]
        best = min(at_layer, key=lambda entry: resolve_keep(entry["keep"], math.ceil(tokens)))
        recommended = best["config"]
    return Calibration(full_score=full_score, table=table, recommended=recommended, rows=rows)


def calibration_table(calibration: Calibration) -> str:
    """Format the candidates as a text table, with the full model's score first and the recommendation marked."""
    lines: list[list[Any]] = [["full", "-", f"{calibration.full_score:.3f}", "reference", "1.00", ""]]
    for entry in calibration.table:
        chosen = calibration.recommended is not None and entry["config"] == calibration.recommended
        lines.append(
            [
                entry["layer"],
                format_keep(entry["keep"]),
                f"{entry['score']:.3f}",
                "yes" if entry["passes"] else "no",
                f"{entry['estimated_prefill_share']:.2f}",
                "<- recommended" if chosen else "",
            ]
        )
    return format_table(["layer", "keep", "needle score", "passes", "est. prefill share", ""], lines)
