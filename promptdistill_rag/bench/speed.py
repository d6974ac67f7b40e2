"""Speed and memory of every method at several prompt lengths, with the ideal prefill time of each.

A measured call runs a method's prefill and then a fixed number of decoding
steps, with EOS ignored. This module drives the engine's own steps
(``Method.prefill``, then ``ModelRunner.forward`` one token at a time) rather
than calling ``engine.generate``. That way every call decodes the same number
of tokens, and token ids can be clipped to a random-weight model's vocabulary.

The ideal prefill time is what a configuration would cost if dropping
tokens were free: ``cost(x)``, the time of one decoder layer on ``x`` tokens,
is the full model's prefill time on ``x`` tokens divided by its depth, and a
PromptDistill config with one stage at layer ``s`` keeping ``k`` of ``n``
tokens ideally costs ``cost(n) * (s + 1) + cost(k) * (layers - s - 1)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..config import FullConfig
from ..runtime import ForwardState, LayerObserver
from .memory import PeakMemoryMeter
from .needle import build_needle_case
from .presets import BenchConfig, format_keep
from .report import format_ratio, format_table, ratio

__all__ = [
    "SelectionClock",
    "clip_lengths",
    "ideal_prefill_seconds",
    "run_speed",
    "speed_summary",
    "speed_table",
]

logger = logging.getLogger(__name__)

_NEEDLE_DEPTH = 0.5


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SelectionClock:
    """Time spent in a method's per-layer callbacks during prefill.

    That is the scoring and top-k of PromptDistill and GemFilter, and the
    scoring and cache eviction of SnapKV and H2O. On CUDA the spans are
    recorded with events, so timing adds no synchronisation inside the forward pass.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.recording = False
        self._seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> None:
        """Clear the total and start recording."""
        self._seconds = 0.0
        self._events = []
        self.recording = True

    def stop(self) -> float:
        """Stop recording and return the seconds recorded since ``start``; on CUDA, after the device has finished."""
        self.recording = False
        if self.cuda:
            torch.cuda.synchronize()
            return self._seconds + sum(begin.elapsed_time(end) for begin, end in self._events) / 1000.0
        return self._seconds

    @contextmanager
    def span(self) -> Iterator[None]:
        """Count the block's time while recording."""
        if not self.recording:
            yield
            return
        if self.cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((begin, end))
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds += time.perf_counter() - started


class _TimedObserver(LayerObserver):
    def __init__(self, inner: LayerObserver, clock: SelectionClock) -> None:
        self.inner = inner
        self.clock = clock

    def before_attention(self, state, layer, module, query, key) -> None:
        with self.clock.span():
            self.inner.before_attention(state, layer, module, query, key)

    def after_attention(self, state, layer, module, query, key, kwargs) -> None:
        with self.clock.span():
            self.inner.after_attention(state, layer, module, query, key, kwargs)


class _TimedState(ForwardState):
    # Methods assign their observer to state.observer inside prefill; this
    # property wraps whatever they assign, so no method code is changed.
    def __init__(self, clock: SelectionClock, **fields: Any) -> None:
        self._clock = clock
        super().__init__(**fields)

    @property
    def observer(self) -> LayerObserver:
        return self._observer

    @observer.setter
    def observer(self, value: LayerObserver) -> None:
        self._observer = _TimedObserver(value, self._clock)


def _instrument(method, clock: SelectionClock) -> None:
    """Make ``method`` create forward states whose observers ``clock`` times."""
    plain_state = method.new_state

    def new_state() -> ForwardState:
        state = plain_state()
        values = {field.name: getattr(state, field.name) for field in dataclasses.fields(state) if field.init}
        return _TimedState(clock, **values)

    method.new_state = new_state


def _cache_size(cache) -> tuple[int, int]:
    entries = 0
    size = 0
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if not getattr(layer, "is_initialized", False) or keys is None:
            continue
        entries += keys.shape[-2]
        size += keys.numel() * keys.element_size() + layer.values.numel() * layer.values.element_size()
    return entries, size


def ideal_prefill_seconds(
    method: str,
    prompt_tokens: int,
    selection_layers: Sequence[int],
    kept_tokens: Sequence[int],
    num_layers: int,
    layer_cost: Callable[[int], float],
) -> float | None:
    """Return a configuration's prefill time if selection and dropping cost nothing.

    Args:
        method: The method name.
        prompt_tokens: ``n``, the prompt length.
        selection_layers: Layers where the call selected tokens (empty if none).
        kept_tokens: Tokens kept after each selection (or after truncation).
        num_layers: The model's depth.
        layer_cost: Seconds of one decoder layer on a number of tokens.

    Returns:
        Seconds, or None for a method this does not model.

    Example:
        >>> ideal_prefill_seconds("promptdistill", 100, [9], [25], 30, lambda tokens: tokens / 100)
        15.0
    """
    if method in ("full", "snapkv", "h2o"):
        # SnapKV and H2O prefill in full; they only shrink the cache afterwards.
        return num_layers * layer_cost(prompt_tokens)
    if method == "truncate":
        return num_layers * layer_cost(kept_tokens[-1] if kept_tokens else prompt_tokens)
    if method == "gemfilter":
        if not selection_layers:
            return num_layers * layer_cost(prompt_tokens)
        layer = selection_layers[0]
        return (layer + 1) * layer_cost(prompt_tokens) + num_layers * layer_cost(kept_tokens[-1])
    if method == "promptdistill":
        total = 0.0
        current = prompt_tokens
        previous = -1
        for layer, kept in zip(selection_layers, kept_tokens):
            total += (layer - previous) * layer_cost(current)
            current = kept
            previous = layer
        return total + (num_layers - 1 - previous) * layer_cost(current)
    return None


def clip_lengths(lengths: Sequence[int], max_positions: int | None, decode_tokens: int) -> list[int]:
    """Return the lengths, each at most ``max_positions - decode_tokens``, without repeats; warn when one is clipped.

    Raises:
        ValueError: For a length below 1, or a model too short for ``decode_tokens``.
    """
    if not lengths:
        msg = "no length given; pass at least one --lengths value in tokens"
        raise ValueError(msg)
    bad = [length for length in lengths if length < 1]
    if bad:
        msg = f"--lengths values must be positive token counts, got {bad[0]}"
        raise ValueError(msg)
    if max_positions is None:
        return list(dict.fromkeys(lengths))
    limit = max_positions - decode_tokens
    if limit < 1:
        msg = f"--decode-tokens {decode_tokens} leaves no room for a prompt in the model's {max_positions} positions"
        raise ValueError(msg)
    clipped = []
    for length in lengths:
        if length > limit:
            logger.warning(
                "--lengths %d does not fit the model's %d positions with %d decoded tokens; measuring %d instead",
                length,
                max_positions,
                decode_tokens,
                limit,
            )
            length = limit
        if length not in clipped:
            clipped.append(length)
    return clipped


def _speed_prompt(engine, haystack: str, length: int, decode_tokens: int):
    """Return the prepared needle prompt for ``length``, shortened until it fits with ``decode_tokens``."""
    target = length
    limit = engine.max_positions
    for _ in range(4):
        case = build_needle_case(engine.tokenizer, haystack, target, _NEEDLE_DEPTH)
        prepared = engine.prepare(case.messages, query=case.query)
        if limit is None or len(prepared) + decode_tokens <= limit:
            return prepared
        target -= len(prepared) + decode_tokens - limit
    msg = f"could not build a needle prompt of about {length} tokens that fits {limit} positions"
    raise ValueError(msg)


def _input_ids(engine, prepared) -> torch.Tensor:
    ids = torch.tensor([prepared.input_ids], device=engine.runner.input_device)
    vocab = engine.model.get_input_embeddings().num_embeddings
    # The default tokenizer with a random-weight architecture: ids past the
    # architecture's vocabulary would index out of range. Which ids the model
    # reads does not change its speed.
    return ids.clamp_max(vocab - 1)


def _measure_call(engine, method, prepared, input_ids, decode_tokens, meter, clock) -> dict[str, Any]:
    runner = engine.runner
    device = input_ids.device
    _synchronize(device)
    with meter.measure() as memory:
        started = time.perf_counter()
        clock.start()
        prefill = method.prefill(prepared, input_ids)
        token = prefill.logits.argmax(dim=-1)
        _synchronize(device)
        prefill_seconds = time.perf_counter() - started
        selection_seconds = clock.stop()
        entries, cache_bytes = _cache_size(prefill.state.cache)
        state = prefill.state
        position = prefill.next_position
        decode_started = time.perf_counter()
        for _ in range(decode_tokens):
            position_ids = torch.full((1, 1), position, device=device, dtype=torch.long)
            state.query_positions = position_ids.view(-1)
            logits = runner.forward(token.view(1, 1).to(device), position_ids, state)
            token = logits.argmax(dim=-1)
            position += 1
        _synchronize(device)
        decode_seconds = time.perf_counter() - decode_started
    return {
        "prefill_seconds": prefill_seconds,
        "selection_seconds": selection_seconds,
        "decode_seconds": decode_seconds,
        "decode_tokens": decode_tokens,
        "decode_seconds_per_token": decode_seconds / decode_tokens,
        "kv_cache_entries": entries,
        "kv_cache_bytes": cache_bytes,
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_growth_bytes": memory.growth_bytes,
        "memory_source": memory.source,
        "kept_tokens": list(prefill.kept_tokens),
        "selection_layers": list(prefill.selection_layers),
    }


def _time_full_forward(engine, input_ids: torch.Tensor, tokens: int) -> float:
    full = engine.method_for(FullConfig())
    device = input_ids.device
    _synchronize(device)
    started = time.perf_counter()
    result = full.full_prefill(input_ids[:, :tokens])
    result.logits.argmax(dim=-1)
    _synchronize(device)
    return time.perf_counter() - started


def run_speed(
    engine,
    configs: Sequence[BenchConfig],
    *,
    lengths: Sequence[int],
    haystack: str,
    warmup: int = 1,
    repeats: int = 2,
    decode_tokens: int = 16,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every config at every length, plus the layer costs behind the ideal prefill times.

    First every config runs ``warmup`` unmeasured rounds on the shortest
    prompt, which loads code paths and kernels once. Then, for each length,
    the configs take turns for ``repeats`` measured rounds, so slow drift of
    the machine affects every method alike, and the full model's prefill is
    timed ``repeats`` times on each kept-token count that a selecting method reached.

    Args:
        engine: The engine to measure.
        configs: Configs from ``bench_configs``; one must be ``full``.
        lengths: Requested prompt lengths in tokens (see ``clip_lengths``).
        haystack: Text for the needle prompts (the needle sits at depth 0.5).
        warmup: Unmeasured rounds on the shortest prompt.
        repeats: Measured rounds per length.
        decode_tokens: Decoding steps per call after the first token.
        progress: Show a progress bar on stderr.

    Returns:
        One row per measured call, and one row per layer-cost measurement.

    Raises:
        ValueError: On bad counts, or a budget a method cannot run.
    """
    from tqdm.auto import tqdm

    if warmup < 0 or repeats < 1 or decode_tokens < 1:
        msg = (
            f"need --warmup >= 0, --repeats >= 1 and --decode-tokens >= 1, got {warmup}, {repeats} and {decode_tokens}"
        )
        raise ValueError(msg)
    if not any(config.method == "full" for config in configs):
        msg = "the speed benchmark needs the full config as its reference"
        raise ValueError(msg)
    lengths = clip_lengths(lengths, engine.max_positions, decode_tokens)
    device = engine.runner.input_device
    meter = PeakMemoryMeter(device)
    clock = SelectionClock(device)
    prompts = []
    for length in lengths:
        prepared = _speed_prompt(engine, haystack, length, decode_tokens)
        methods = []
        for config in configs:
            method = engine.method_for(config.config)
            method.check(prepared)
            _instrument(method, clock)
            methods.append(method)
        prompts.append((length, prepared, methods))

    shortest = min(prompts, key=lambda prompt: len(prompt[1]))
    total = (warmup + len(lengths) * repeats) * len(configs)
    bar = tqdm(total=total, desc="speed", unit="call", file=sys.stderr, disable=not progress)
    rows: list[dict[str, Any]] = []
    costs: list[dict[str, Any]] = []
    try:
        _, prepared, methods = shortest
        input_ids = _input_ids(engine, prepared)
        for _ in range(warmup):
            for config, method in zip(configs, methods):
                bar.set_postfix_str(f"warmup, {config.label}", refresh=False)
                _measure_call(engine, method, prepared, input_ids, decode_tokens, meter, clock)
                bar.update(1)
        for length, prepared, methods in prompts:
            input_ids = _input_ids(engine, prepared)
            for repeat in range(repeats):
                for config, method in zip(configs, methods):
                    bar.set_postfix_str(f"{len(prepared)} tokens, {config.label}", refresh=False)
                    measured = _measure_call(engine, method, prepared, input_ids, decode_tokens, meter, clock)
                    bar.update(1)
                    rows.append(
                        {
                            "length": length,
                            "prompt_tokens": len(prepared),
                            "method": config.method,
                            "keep": format_keep(config.keep),
                            "variant": config.variant,
                            "label": config.label,
                            "repeat": repeat,
                            **measured,
                            "config": config.config.model_dump(),
                        }
                    )
            costs.extend(_layer_costs(engine, rows, length, len(prepared), input_ids, repeats, bar))
    finally:
        bar.close()
    return rows, costs


def _layer_costs(engine, rows, length, prompt_tokens, input_ids, repeats, bar) -> list[dict[str, Any]]:
    full_times = [row["prefill_seconds"] for row in rows if row["length"] == length and row["method"] == "full"]
    counts = sorted(
        {
            kept
            for row in rows
            if row["length"] == length and row["method"] in ("promptdistill", "gemfilter", "truncate")
            for kept in row["kept_tokens"]
            if kept < prompt_tokens
        }
    )
    bar.total += len(counts) * repeats
    bar.refresh()
    # The full model's own prefill on the whole prompt gives cost(n); its
    # measured/ideal ratio is therefore 1 by construction.
    costs = [_cost_row(length, prompt_tokens, prompt_tokens, full_times, engine.num_layers)]
    for tokens in counts:
        times = []
        for _ in range(repeats):
            bar.set_postfix_str(f"layer cost on {tokens} tokens", refresh=False)
            times.append(_time_full_forward(engine, input_ids, tokens))
            bar.update(1)
        costs.append(_cost_row(length, prompt_tokens, tokens, times, engine.num_layers))
    return costs


def _cost_row(length: int, prompt_tokens: int, tokens: int, times: Sequence[float], num_layers: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "length": length,
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
        "full_prefill_seconds_median": median,
        "layer_seconds": median / num_layers,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def speed_summary(
    rows: Sequence[dict[str, Any]], costs: Sequence[dict[str, Any]], num_layers: int
) -> list[dict[str, Any]]:
    """Summarize the runs per length and config: medians, min and max, ratios to ``full`` and to the ideal."""
    cost_table = {(row["length"], row["tokens"]): row["layer_seconds"] for row in costs}
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["length"], row["label"]), []).append(row)
    summary = []
    for (length, label), group in groups.items():
        first = group[0]
        prefill = _spread([row["prefill_seconds"] for row in group])
        decode = _spread([row["decode_seconds_per_token"] for row in group])
        peak = _spread([row["peak_memory_growth_bytes"] for row in group])
        selection = statistics.median(row["selection_seconds"] for row in group)

        def layer_cost(tokens: int, length: int = length) -> float:
            return cost_table.get((length, tokens), float("nan"))

        ideal = ideal_prefill_seconds(
            first["method"],
            first["prompt_tokens"],
            first["selection_layers"],
            first["kept_tokens"],
            num_layers,
            layer_cost,
        )
        if ideal is not None and math.isnan(ideal):
            ideal = None
        summary.append(
            {
                "length": length,
                "prompt_tokens": first["prompt_tokens"],
                "label": label,
                "method": first["method"],
                "variant": first["variant"],
                "keep": first["keep"],
                "kept_tokens": first["kept_tokens"],
                "selection_layers": first["selection_layers"],
                "repeats": len(group),
                **{f"prefill_seconds_{name}": value for name, value in prefill.items()},
                **{f"decode_seconds_per_token_{name}": value for name, value in decode.items()},
                "kv_cache_bytes": statistics.median(row["kv_cache_bytes"] for row in group),
                **{f"peak_memory_growth_bytes_{name}": value for name, value in peak.items()},
                "memory_source": first["memory_source"],
                "selection_seconds_median": selection,
                "ideal_prefill_seconds": ideal,
                "measured_over_ideal": ratio(prefill["median"], ideal),
            }
        )
    for entry in summary:
        reference = next(
            (other for other in summary if other["length"] == entry["length"] and other["method"] == "full"), None
        )
        if reference is None:
            continue
        entry["prefill_vs_full"] = ratio(entry["prefill_seconds_median"], reference["prefill_seconds_median"])
        entry["decode_vs_full"] = ratio(
            entry["decode_seconds_per_token_median"], reference["decode_seconds_per_token_median"]
        )
        entry["kv_cache_vs_full"] = ratio(entry["kv_cache_bytes"], reference["kv_cache_bytes"])
        entry["peak_memory_vs_full"] = ratio(
            entry["peak_memory_growth_bytes_median"], reference["peak_memory_growth_bytes_median"]
        )
    return summary


def speed_table(summary: Sequence[dict[str, Any]]) -> str:
    """Format ``speed_summary`` output as a text table."""
    headers = [
        "tokens",
        "method",
        "keep",
        "prefill s (min-max)",
        "vs full",
        "ideal s",
        "meas/ideal",
        "select s",
        "decode ms/tok",
        "vs full",
        "KV MiB",
        "vs full",
        "peak MiB",
    ]
    lines = []
    for entry in summary:
        ideal = entry["ideal_prefill_seconds"]
        lines.append(
            [
                entry["prompt_tokens"],
                # Variants of one method would otherwise print as identical rows.
                entry["method"] + (f"/{entry['variant']}" if entry.get("variant") else ""),
                entry["keep"] or "-",
                f"{entry['prefill_seconds_median']:.3f} "
                f"({entry['prefill_seconds_min']:.3f}-{entry['prefill_seconds_max']:.3f})",
                format_ratio(entry.get("prefill_vs_full")),
                "n/a" if ideal is None else f"{ideal:.3f}",
                format_ratio(entry["measured_over_ideal"]),
                f"{entry['selection_seconds_median']:.4f}",
                f"{entry['decode_seconds_per_token_median'] * 1000:.1f}",
                format_ratio(entry.get("decode_vs_full")),
                f"{entry['kv_cache_bytes'] / 2**20:.1f}",
                format_ratio(entry.get("kv_cache_vs_full")),
                f"{entry['peak_memory_growth_bytes_median'] / 2**20:.1f}",
            ]
        )
    return format_table(headers, lines)
