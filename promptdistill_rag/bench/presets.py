"""The registry of method presets: how each benchmarked method's config is built from one budget.

Every benchmark compares methods at the same budget ``keep``. A preset turns
that budget into a complete method config, so that a comparison is defined
in one place rather than in each benchmark:

* ``full``: the unmodified model, the reference of every ratio. It takes no budget.
* ``promptdistill``: the engine's default ``DistillConfig`` with ``keep`` replaced.
* ``gemfilter``: selects at the same layer as PromptDistill's last stage, so
  the two differ only in what happens after the selection.
* ``snapkv``, ``h2o``, ``truncate``: their defaults with ``keep`` replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from ..config import METHOD_NAMES, DistillConfig, KeepSpec, config_for_method

__all__ = [
    "BenchConfig",
    "MethodPreset",
    "PRESETS",
    "bench_configs",
    "distill_base",
    "format_keep",
    "select_methods",
]


@dataclass(frozen=True)
class MethodPreset:
    """A method's benchmark recipe: the function that builds its config from a budget.

    Attributes:
        name: The method name (``config.method``).
        description: One line for help text and result files.
        build: Returns the config for a budget, given the PromptDistill config
            that the engine uses by default (the reference for layer choices).
        takes_budget: False for ``full``, which runs once per case.
    """

    name: str
    description: str
    build: Callable[[KeepSpec | None, DistillConfig], object]
    takes_budget: bool = True


def _distill_keep(keep: KeepSpec, base: DistillConfig) -> tuple[KeepSpec, ...]:
    # The last stage gets the budget. An earlier stage keeps its own value
    # while that is a budget of the same kind (count or fraction) and no
    # smaller, because keep must not grow from one stage to the next.
    stages = base.keep_per_stage()
    earlier = []
    for value in stages[:-1]:
        same_kind = isinstance(value, float) == isinstance(keep, float)
        earlier.append(value if same_kind and value >= keep else keep)
    return (*earlier, keep)


def _build_distill(keep: KeepSpec | None, base: DistillConfig) -> DistillConfig:
    # model_copy would skip validation, so the config is built anew.
    return DistillConfig.model_validate({**base.model_dump(), "keep": _distill_keep(keep, base)})


# Every method takes min_keep from the base config, so that a fractional
# budget resolves to the same token count for all of them.
def _build_gemfilter(keep: KeepSpec | None, base: DistillConfig):
    return config_for_method(
        "gemfilter", keep=keep, selection_layer=base.selection_layers[-1], min_keep=base.min_keep
    )


def _build_keep_only(method: str) -> Callable[[KeepSpec | None, DistillConfig], object]:
    def build(keep: KeepSpec | None, base: DistillConfig):
        return config_for_method(method, keep=keep, min_keep=base.min_keep)

    return build


PRESETS: dict[str, MethodPreset] = {
    "full": MethodPreset(
        "full", "the unmodified model (reference)", lambda keep, base: config_for_method("full"), takes_budget=False
    ),
    "promptdistill": MethodPreset(
        "promptdistill", "the engine's default DistillConfig with keep replaced", _build_distill
    ),
    "gemfilter": MethodPreset(
        "gemfilter", "GemFilter selecting at PromptDistill's last selection layer", _build_gemfilter
    ),
    "snapkv": MethodPreset("snapkv", "SnapKV with keep replaced", _build_keep_only("snapkv")),
    "h2o": MethodPreset("h2o", "H2O with keep replaced", _build_keep_only("h2o")),
    "truncate": MethodPreset("truncate", "context truncation with keep replaced", _build_keep_only("truncate")),
}
"""Method presets by method name; the keys are exactly ``METHOD_NAMES``."""


@dataclass(frozen=True)
class BenchConfig:
    """One method at one budget, as a benchmark runs it.

    Attributes:
        method: The method name.
        keep: The budget, or None for ``full``.
        config: The complete method config.
        variant: Tells apart configs of one method and budget (calibration
            sets it to the selection layer, ``"L12"``); empty otherwise.
    """

    method: str
    keep: KeepSpec | None
    config: object
    variant: str = ""

    @property
    def label(self) -> str:
        """``"full"``, ``"method@keep"`` or ``"method@keep/variant"``, for tables, plots and file names."""
        label = self.method if self.keep is None else f"{self.method}@{format_keep(self.keep)}"
        return f"{label}/{self.variant}" if self.variant else label


def format_keep(keep: KeepSpec | None) -> str:
    """Return a budget as text: ``"0.25"``, ``"512"``, or ``""`` for none."""
    if keep is None:
        return ""
    if isinstance(keep, float):
        return f"{keep:g}"
    return str(keep)


def distill_base(engine) -> DistillConfig:
    """Return the engine's default config when it is a ``DistillConfig``, else ``DistillConfig()``."""
    config = engine.config
    return config if isinstance(config, DistillConfig) else DistillConfig()


def select_methods(names: Sequence[str] | None) -> list[str]:
    """Return the methods to run: ``full`` first, then ``names`` in order without repeats (all when None).

    Raises:
        ValueError: For a name that is not a method.
    """
    if names is None:
        names = METHOD_NAMES
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        msg = f"unknown method {unknown[0]!r}; valid methods are {', '.join(METHOD_NAMES)}"
        raise ValueError(msg)
    chosen = ["full"]
    for name in names:
        if name not in chosen:
            chosen.append(name)
    return chosen


def bench_configs(
    methods: Sequence[str] | None,
    budgets: Sequence[KeepSpec],
    base: DistillConfig,
    variants: Mapping[str, Mapping[str, object]] | None = None,
) -> list[BenchConfig]:
    """Build ``full`` once, then every other method at every budget.

    Args:
        methods: Method names; None means all. ``full`` is always added.
        budgets: Budgets, each an int token count or a float fraction in ``(0, 1]``.
        base: The PromptDistill config the presets start from (see ``distill_base``).
        variants: Extra PromptDistill configs by name: ``DistillConfig`` fields laid
            over ``base``, each run at every budget with its name as the variant.

    Raises:
        ValueError: For an unknown method, no budget, or a budget that a method rejects.

    Example:
        >>> [c.label for c in bench_configs(["truncate"], [0.25, 512], DistillConfig())]
        ['full', 'truncate@0.25', 'truncate@512']
    """
    names = select_methods(methods)
    if not budgets:
        msg = "no budget given; pass at least one --keep value (an int token count or a float fraction)"
        raise ValueError(msg)
    configs = []
    for name in names:
        preset = PRESETS[name]
        for keep in budgets if preset.takes_budget else [None]:
            try:
                config = preset.build(keep, base)
            except (ValidationError, ValueError) as error:
                msg = f"invalid budget --keep {keep!r} for method {name}: {_first_error(error)}"
                raise ValueError(msg) from error
            configs.append(BenchConfig(method=name, keep=keep, config=config))
    for variant, fields in (variants or {}).items():
        try:
            variant_base = DistillConfig.model_validate({**base.model_dump(), **fields})
        except ValidationError as error:
            msg = f"invalid --variant {variant}: {_first_error(error)}"
            raise ValueError(msg) from error
        for keep in budgets:
            config = PRESETS["promptdistill"].build(keep, variant_base)
            configs.append(BenchConfig(method="promptdistill", keep=keep, config=config, variant=variant))
    return configs


def _first_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return error.errors()[0]["msg"]
    return str(error)
