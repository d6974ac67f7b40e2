"""The ``promptdistill bench needle|rag|speed`` and ``promptdistill calibrate`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..cli import parse_number
from ..config import METHOD_NAMES, DistillConfig
from .report import RunStart

__all__ = ["add_bench_commands"]

logger = logging.getLogger(__name__)

_KEEP_HELP = (
    "budgets: each an int token count or a float fraction of the prompt; every method but full runs at each "
    "(default: %(default)s)"
)
_METHODS_HELP = (
    f"methods to compare, any of {', '.join(METHOD_NAMES)} (default: all); full always runs once as the reference"
)


def _add_common(parser: argparse.ArgumentParser, command: str, *, budgets: bool = True) -> None:
    parser.add_argument(
        "--model",
        metavar="ID_OR_PATH",
        help="a Hugging Face model id or local path (default: the embedded SmolLM2-135M-Instruct)",
    )
    if budgets:
        parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, metavar="METHOD", help=_METHODS_HELP)
        parser.add_argument("--keep", nargs="+", type=parse_number, default=[0.25], metavar="KEEP", help=_KEEP_HELP)
        parser.add_argument(
            "--variant",
            action="append",
            default=[],
            metavar="NAME=JSON",
            help=(
                "also run PromptDistill with these DistillConfig fields over the engine's default, labelled NAME "
                "(repeatable), e.g. --variant 'paper={\"selector\": \"last_token\", \"signal\": \"logits\", "
                "\"head_reduction\": \"mean\", \"granularity\": \"token\"}'"
            ),
        )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / command,
        metavar="DIR",
        help="folder for the JSON, CSV and PNG files (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _variants(specs: list[str]) -> dict[str, dict]:
    """Parse ``--variant NAME=JSON`` values into ``{name: fields}``."""
    variants: dict[str, dict] = {}
    for spec in specs:
        name, separator, text = spec.partition("=")
        name = name.strip()
        if not separator or not name:
            msg = f"--variant {spec!r} must look like NAME=JSON, e.g. paper={{\"selector\": \"last_token\"}}"
            raise ValueError(msg)
        fields = _json_fields(f"--variant {name}", text)
        if name in variants:
            msg = f"--variant {name} is given twice"
            raise ValueError(msg)
        variants[name] = fields
    return variants


def _json_fields(option: str, text: str) -> dict:
    """Parse an option's JSON object of ``DistillConfig`` fields, naming the option in errors."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        msg = f"{option}: invalid JSON ({error})"
        raise ValueError(msg) from error
    if not isinstance(fields, dict):
        msg = f"{option}: expected a JSON object of DistillConfig fields, got {text!r}"
        raise ValueError(msg)
    return fields


def _add_needle_text(parser: argparse.ArgumentParser) -> None:
    from .needle import DEFAULT_KEYWORDS, DEFAULT_NEEDLE, DEFAULT_QUESTION

    parser.add_argument(
        "--haystack-dir",
        metavar="DIR",
        help="folder of .txt files to hide the needle in (default: Python's documentation topics)",
    )
    parser.add_argument("--needle", default=DEFAULT_NEEDLE, help="the sentence to hide (default: %(default)r)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="the question about it (default: %(default)r)")
    parser.add_argument(
        "--keywords",
        nargs="+",
        default=list(DEFAULT_KEYWORDS),
        help="words of the needle a correct answer contains; the score is the share found (default: %(default)s)",
    )


def add_bench_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``bench`` (with ``needle``, ``rag`` and ``speed``) and ``calibrate`` as subcommands."""
    bench = commands.add_parser(
        "bench",
        help="compare methods on Needle-in-a-Haystack, RAG question answering and speed",
        description=(
            "Run one benchmark with the full model and every chosen method at every budget, write JSON and CSV "
            "of every run plus plots to --out, and print each method's figure with its ratio to full."
        ),
    )
    suites = bench.add_subparsers(dest="suite", required=True)

    needle = suites.add_parser(
        "needle",
        help="Needle-in-a-Haystack over context lengths and depths",
        description=(
            "Hide a sentence at several depths of texts of several lengths and score each answer by the share "
            "of the needle's key words it contains. Writes needle.json, needle.csv and one heatmap per method "
            "and budget. Expect the default run (3 lengths x 5 depths, 6 methods at one budget) to take "
            "about 11 minutes on 2 idle CPU cores with SmolLM2-135M (an estimate from measured CPU time)."
        ),
    )
    _add_common(needle, "needle")
    needle.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[1024, 2048, 4096],
        metavar="TOKENS",
        help="context lengths in tokens (default: %(default)s)",
    )
    needle.add_argument(
        "--depths",
        nargs="+",
        type=float,
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        metavar="FRACTION",
        help="needle depths in [0, 1] (default: %(default)s)",
    )
    _add_needle_text(needle)
    needle.add_argument(
        "--max-new-tokens", type=int, default=32, help="tokens generated per answer (default: %(default)s)"
    )
    needle.set_defaults(handler=cmd_bench_needle)

    rag = suites.add_parser(
        "rag",
        help="RAG question answering on Natural Questions with distractor passages",
        description=(
            "Put each question's gold passage among other questions' gold passages, at the first, middle and "
            "last position, and count answers that contain an accepted answer. Writes rag.json, rag.csv and "
            "rag_accuracy.png. Expect the default run (5 questions x 3 positions, 19 distractors, about 2,700 "
            "tokens, 6 methods at one budget) to take about 11 minutes on 2 idle CPU cores with SmolLM2-135M "
            "(an estimate from measured CPU time)."
        ),
    )
    _add_common(rag, "rag")
    rag.add_argument(
        "--data", required=True, metavar="PATH", help="the nq-open-oracle JSON-lines file (.jsonl or .jsonl.gz)"
    )
    rag.add_argument("--questions", type=int, default=5, help="questions to ask (default: %(default)s)")
    rag.add_argument(
        "--offset", type=int, default=0, help="index of the first question in the file (default: %(default)s)"
    )
    rag.add_argument(
        "--distractors", type=int, default=19, help="other passages around the gold one (default: %(default)s)"
    )
    rag.add_argument(
        "--positions",
        nargs="+",
        default=["first", "middle", "last"],
        metavar="POSITION",
        help="gold passage positions: first, middle, last (default: %(default)s)",
    )
    rag.add_argument(
        "--max-new-tokens", type=int, default=32, help="tokens generated per answer (default: %(default)s)"
    )
    rag.set_defaults(handler=cmd_bench_rag)

    speed = suites.add_parser(
        "speed",
        help="prefill and decode time, KV cache size and peak memory at several prompt lengths",
        description=(
            "Measure time to first token, decode time per token, KV cache bytes after prefill, peak memory "
            "(CUDA peak allocation, or peak resident set growth on CPU), the selection step's own time and the "
            "ideal prefill time of each configuration, as median with min and max over --repeats. Writes "
            "speed.json, speed.csv and speed_prefill.png. Expect the default run to take about 12 minutes on "
            "2 idle CPU cores with SmolLM2-135M (an estimate from measured CPU time)."
        ),
    )
    _add_common(speed, "speed")
    speed.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[1024, 2048, 4096, 8192],
        metavar="TOKENS",
        help="prompt lengths in tokens, clipped to the model's positions (default: %(default)s)",
    )
    speed.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unmeasured rounds of every method on the shortest prompt (default: %(default)s)",
    )
    speed.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="measured rounds per length; raise it on a GPU, where runs are short (default: %(default)s)",
    )
    speed.add_argument(
        "--decode-tokens",
        type=int,
        default=16,
        help="decoding steps timed after the first token (default: %(default)s)",
    )
    speed.add_argument(
        "--haystack-dir",
        metavar="DIR",
        help="folder of .txt files for the prompts (default: Python's documentation topics)",
    )
    speed.add_argument(
        "--random-weights",
        action="store_true",
        help=(
            "build --model's architecture (or --config-json's) with random weights, in bfloat16 on a GPU, using the "
            "default model's tokenizer; measures speed and memory without downloading weights"
        ),
    )
    speed.add_argument("--config-json", metavar="PATH", help="a model's config.json for --random-weights")
    speed.set_defaults(handler=cmd_bench_speed)

    calibrate = commands.add_parser(
        "calibrate",
        help="find the earliest selection layer and smallest budget that keep needle recall at the full model's level",
        description=(
            "Run a short Needle-in-a-Haystack sweep with the full model and PromptDistill at every candidate "
            "layer and budget, print the table and the recommended config as JSON (the last line of the output). "
            "Exits with status 1 when no candidate reaches the full model's score. Expect the default sweep "
            "(1 length x 3 depths x 15 candidates) to take about 4 minutes on 2 idle CPU cores with "
            "SmolLM2-135M (an estimate from measured CPU time)."
        ),
    )
    _add_common(calibrate, "calibrate", budgets=False)
    calibrate.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[2048],
        metavar="TOKENS",
        help="context lengths in tokens (default: %(default)s)",
    )
    calibrate.add_argument(
        "--depths",
        nargs="+",
        type=float,
        default=[0.1, 0.5, 0.9],
        metavar="FRACTION",
        help="needle depths in [0, 1] (default: %(default)s)",
    )
    calibrate.add_argument(
        "--layers",
        nargs="+",
        type=parse_number,
        default=[0.3, 0.4, 0.5, 0.6, 0.7],
        metavar="LAYER",
        help="candidate selection layers: int indices or float fractions of the depth (default: %(default)s)",
    )
    calibrate.add_argument(
        "--keeps",
        nargs="+",
        type=parse_number,
        default=[0.5, 0.25, 0.15],
        metavar="KEEP",
        help="candidate budgets: int token counts or float fractions of the prompt (default: %(default)s)",
    )
    calibrate.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="how far below the full model's mean score a candidate may fall and pass (default: %(default)s)",
    )
    calibrate.add_argument(
        "--base",
        metavar="JSON",
        help=(
            "DistillConfig fields every candidate uses, laid over the engine's default, e.g. "
            "'{\"selector\": \"last_token\"}' (default: the engine's default config)"
        ),
    )
    _add_needle_text(calibrate)
    calibrate.add_argument(
        "--max-new-tokens", type=int, default=32, help="tokens generated per answer (default: %(default)s)"
    )
    calibrate.set_defaults(handler=cmd_calibrate)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"handler", "command", "suite", "verbose"}
    return {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items() if key not in skip
    }


def _needle_options(args: argparse.Namespace) -> None:
    from .needle import DEFAULT_KEYWORDS, DEFAULT_NEEDLE

    if args.needle != DEFAULT_NEEDLE and list(args.keywords) == list(DEFAULT_KEYWORDS):
        msg = "--needle was changed but --keywords was not; pass --keywords with words from the new needle"
        raise ValueError(msg)


def _haystack(directory: str | None) -> str:
    from .needle import load_haystack

    if directory is not None and not Path(directory).is_dir():
        msg = f"--haystack-dir {directory} is not a folder; pass a folder of .txt files"
        raise FileNotFoundError(msg)
    return load_haystack(directory)


def _finish(args, engine, name: str, rows, summary, table: str, plot_paths, started: RunStart) -> None:
    from .report import run_metadata, write_runs

    command = f"bench {name}" if name != "calibrate" else "calibrate"
    meta = run_metadata(engine, command, _settings(args), started=started)
    meta["elapsed_seconds"] = round(time.perf_counter() - started.clock, 1)
    json_path, csv_path = write_runs(args.out, name, meta, rows, summary)
    print(table)
    for path in (json_path, csv_path, *plot_paths):
        logger.info("Wrote %s", path)


def cmd_bench_needle(args: argparse.Namespace) -> int:
    from .models import load_engine
    from .needle import check_lengths, run_needle
    from .plots import needle_heatmaps
    from .presets import bench_configs, distill_base
    from .report import quality_table, summarize_quality

    started = RunStart.now()
    _needle_options(args)
    haystack = _haystack(args.haystack_dir)
    engine = load_engine(args.model)
    configs = bench_configs(args.methods, args.keep, distill_base(engine), variants=_variants(args.variant))
    check_lengths(engine, args.lengths, args.max_new_tokens)
    rows = run_needle(
        engine,
        configs,
        lengths=args.lengths,
        depths=args.depths,
        haystack=haystack,
        needle=args.needle,
        question=args.question,
        keywords=args.keywords,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
    )
    summary = summarize_quality(rows, "needle_score")
    plots = needle_heatmaps(rows, args.out)
    _finish(args, engine, "needle", rows, summary, quality_table(summary, "needle_score"), plots, started)
    return 0


def cmd_bench_rag(args: argparse.Namespace) -> int:
    from .models import load_engine
    from .plots import rag_bar_chart
    from .presets import bench_configs, distill_base
    from .rag import load_nq, run_rag
    from .report import quality_table, summarize_quality

    started = RunStart.now()
    items = load_nq(args.data)
    engine = load_engine(args.model)
    configs = bench_configs(args.methods, args.keep, distill_base(engine), variants=_variants(args.variant))
    rows = run_rag(
        engine,
        configs,
        items=items,
        questions=args.questions,
        offset=args.offset,
        distractors=args.distractors,
        positions=args.positions,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
    )
    summary = summarize_quality(rows, "accuracy", split="position")
    split_columns = [f"accuracy_position_{position}" for position in dict.fromkeys(args.positions)]
    plot = rag_bar_chart(rows, args.out)
    _finish(args, engine, "rag", rows, summary, quality_table(summary, "accuracy", split_columns), [plot], started)
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from .models import load_engine, random_weight_engine
    from .plots import speed_chart
    from .presets import bench_configs, distill_base
    from .speed import run_speed, speed_summary, speed_table

    started = RunStart.now()
    if args.config_json and not args.random_weights:
        msg = "--config-json only applies with --random-weights"
        raise ValueError(msg)
    haystack = _haystack(args.haystack_dir)
    if args.random_weights:
        engine = random_weight_engine(args.model, args.config_json)
    else:
        engine = load_engine(args.model)
    configs = bench_configs(args.methods, args.keep, distill_base(engine), variants=_variants(args.variant))
    rows, costs = run_speed(
        engine,
        configs,
        lengths=args.lengths,
        haystack=haystack,
        warmup=args.warmup,
        repeats=args.repeats,
        decode_tokens=args.decode_tokens,
        progress=not args.no_progress,
    )
    summary = speed_summary(rows, costs, engine.num_layers)
    plot = speed_chart(summary, args.out)
    _finish(
        args, engine, "speed", rows, {"configs": summary, "layer_costs": costs}, speed_table(summary), [plot], started
    )
    return 0


def _calibration_base(engine, text: str | None):
    """Return the engine's default ``DistillConfig`` with the ``--base`` JSON fields laid over it."""
    from .presets import distill_base

    base = distill_base(engine)
    if text is None:
        return base
    fields = _json_fields("--base", text)
    return DistillConfig.model_validate({**base.model_dump(), **fields})


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..calibrate import calibrate, calibration_table
    from .models import load_engine

    started = RunStart.now()
    _needle_options(args)
    haystack = _haystack(args.haystack_dir)
    engine = load_engine(args.model)
    calibration = calibrate(
        engine,
        haystack=haystack,
        lengths=args.lengths,
        depths=args.depths,
        layers=args.layers,
        keeps=args.keeps,
        tolerance=args.tolerance,
        needle=args.needle,
        question=args.question,
        keywords=args.keywords,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
        base=_calibration_base(engine, args.base),
    )
    summary = [{**entry, "config": entry["config"].model_dump()} for entry in calibration.table]
    _finish(args, engine, "calibrate", calibration.rows, summary, calibration_table(calibration), [], started)
    print()
    if calibration.recommended is None:
        print(
            f"promptdistill calibrate: no candidate reached the full model's needle score of "
            f"{calibration.full_score:.3f}; try later --layers or larger --keeps",
            file=sys.stderr,
        )
        return 1
    print(calibration.recommended.model_dump_json())
    return 0
