"""The ``promptdistill`` command: ask questions over documents, run benchmarks, calibrate a model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import contextmanager

from .config import METHOD_NAMES, config_for_method

__all__ = ["main"]

logger = logging.getLogger("promptdistill_rag")

_LAYER_HELP = "selection layer: an int index (negative counts from the end) or a float fraction of the depth"
_KEEP_HELP = "tokens kept: an int count or a float fraction of the prompt (e.g. 0.25)"


def parse_number(text: str) -> int | float:
    """Parse ``"12"`` as an int and ``"0.25"`` as a float, for ``--keep`` and ``--layer``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        msg = f"expected an int or a float, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _method_config(args: argparse.Namespace, base):
    """Return the config for ``--method`` with ``--keep`` and ``--layer`` applied on top of ``base`` when it matches."""
    method = args.method or base.method
    params = base.model_dump(exclude={"method"}) if base.method == method else {}
    if args.keep is not None:
        params["keep"] = args.keep
    if args.layer is not None:
        if method == "promptdistill":
            params["selection_layers"] = [args.layer]
            if isinstance(params.get("keep"), (list, tuple)) and len(params["keep"]) > 1:
                params["keep"] = params["keep"][-1:]
        elif method == "gemfilter":
            params["selection_layer"] = args.layer
        else:
            msg = f"--layer does not apply to method {method!r}; it is for promptdistill and gemfilter"
            raise ValueError(msg)
    return config_for_method(method, **params)


@contextmanager
def _prefill_progress(engine, enabled: bool):
    """Show a per-layer progress bar on stderr during the prefill (the long part on CPUs)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=engine.num_layers, desc="Reading the documents (layers)", file=sys.stderr, leave=False)
    handles = []

    def advance(module, args, output):
        if bar.n < bar.total:
            bar.update(1)

    for layer in engine.runner.layers:
        handles.append(layer.register_forward_hook(advance))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        bar.close()


def _load_engine(args: argparse.Namespace):
    from .engine import PromptDistillEngine

    logger.info("Loading the model (%s)", args.model or "default: SmolLM2-135M-Instruct")
    if args.model:
        return PromptDistillEngine.from_pretrained(args.model)
    return PromptDistillEngine.from_default()


def _document_retention(engine, rag_prompt, kept_indices, titles):
    prepared = engine.prepare(rag_prompt.messages, query=rag_prompt.query, chunks=rag_prompt.chunks)
    kept = set(kept_indices)
    rows = []
    for title, (start, end) in zip(titles, prepared.chunk_spans):
        share = sum(1 for i in range(start, end) if i in kept) / max(1, end - start)
        rows.append({"title": title, "tokens": end - start, "kept_share": round(share, 3)})
    return rows


def cmd_ask(args: argparse.Namespace) -> int:
    from .corpus import default_corpus, read_documents
    from .rag import build_rag_prompt

    engine = _load_engine(args)
    config = _method_config(args, engine.config)
    if args.docs:
        documents = read_documents(args.docs)
    else:
        # Most of the context, with room for the question, template and answer.
        budget = int((engine.max_positions or 8192) * 0.75)
        documents = default_corpus(lambda text: len(engine.tokenizer(text, add_special_tokens=False).input_ids), budget)
    titles = [document.title for document in documents]
    prompt = build_rag_prompt(args.question, [d.text for d in documents], titles=titles)
    prompt_tokens = engine.count_tokens(prompt.messages)
    limit = engine.max_positions
    if limit is not None and prompt_tokens + args.max_new_tokens > limit:
        msg = (
            f"the {len(documents)} documents make a {prompt_tokens}-token prompt; with {args.max_new_tokens} "
            f"new tokens that exceeds the model's {limit} positions, so at most "
            f"{limit - args.max_new_tokens} prompt tokens fit. Pass fewer documents."
        )
        raise ValueError(msg)
    logger.info("Answering over %d documents (%d prompt tokens) with %s", len(documents), prompt_tokens, config.method)
    with _prefill_progress(engine, enabled=not args.json and sys.stderr.isatty() or args.progress):
        result = engine.generate(
            **prompt.generate_kwargs(), config=config, max_new_tokens=args.max_new_tokens
        )
    stats = result.stats
    retention = _document_retention(engine, prompt, stats.kept_indices, titles) if stats.kept_indices else []
    if args.json:
        payload = {
            "question": args.question,
            "answer": result.text,
            "model": engine.model_name,
            "documents": len(documents),
            "config": config.model_dump(),
            "stats": stats.model_dump(),
            "document_retention": retention,
        }
        print(json.dumps(payload))
        return 0
    print(result.text.strip())
    print()
    print(f"model:          {engine.model_name} ({config.method})")
    print(f"documents:      {len(documents)}")
    print(f"prompt tokens:  {stats.prompt_tokens}")
    if stats.selection_layers:
        stages = ", ".join(f"layer {layer}: {kept}" for layer, kept in zip(stats.selection_layers, stats.kept_tokens))
        print(f"kept tokens:    {stages} ({stats.kept_tokens[-1] / stats.prompt_tokens:.0%} of the prompt)")
    print(f"KV cache:       {stats.kv_cache_entries} entries, {stats.kv_cache_bytes / 2**20:.1f} MiB")
    print(f"time:           {stats.prefill_seconds:.2f} s to first token, {stats.decode_seconds:.2f} s decoding")
    if retention:
        best = sorted(retention, key=lambda row: -row["kept_share"])[:5]
        shown = ", ".join(f"{row['title']} {row['kept_share']:.0%}" for row in best)
        print(f"most kept:      {shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``promptdistill`` command."""
    parser = argparse.ArgumentParser(
        prog="promptdistill",
        description="Answer questions over long documents with PromptDistill, and benchmark it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser(
        "ask",
        help="answer a question over documents, all of them in one prompt",
        description=(
            "Put every .txt and .md file under --docs (or, without --docs, Python documentation topics "
            "that fill most of the model's context) into one prompt with the question at the end, answer "
            "it, and report what the model kept."
        ),
    )
    ask.add_argument("--docs", nargs="+", metavar="PATH", help="files or folders of .txt and .md documents")
    ask.add_argument("--question", required=True, help="the question to answer")
    ask.add_argument("--model", metavar="ID_OR_PATH", help="a Hugging Face model id or local path (default: the embedded SmolLM2)")
    ask.add_argument("--method", choices=METHOD_NAMES, help="compression method (default: the engine's, promptdistill)")
    ask.add_argument("--keep", type=parse_number, help=_KEEP_HELP)
    ask.add_argument("--layer", type=parse_number, help=_LAYER_HELP)
    ask.add_argument("--max-new-tokens", type=int, default=128, help="maximum number of tokens to generate (default: 128)")
    ask.add_argument("--json", action="store_true", help="print one JSON object with the answer and the stats")
    ask.add_argument("--progress", action="store_true", help="show the prefill progress bar even when stderr is not a terminal")
    ask.set_defaults(handler=cmd_ask)

    from .bench.cli import add_bench_commands

    add_bench_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``promptdistill`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"promptdistill {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
