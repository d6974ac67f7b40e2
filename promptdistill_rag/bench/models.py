"""Load the engine a benchmark runs on: a pretrained model, or an architecture with random weights."""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["load_engine", "random_weight_engine"]

logger = logging.getLogger(__name__)


def load_engine(model: str | None):
    """Return an engine for a Hub id or local path, or for the embedded default model when ``model`` is None."""
    from ..engine import PromptDistillEngine

    logger.info("Loading the model (%s)", model or "default: SmolLM2-135M-Instruct")
    if model:
        return PromptDistillEngine.from_pretrained(model)
    return PromptDistillEngine.from_default()


def random_weight_engine(model: str | None = None, config_json: str | None = None, *, seed: int = 0):
    """Build an engine around an architecture with random weights, for speed and memory measurements only.

    The config comes from ``config_json`` (a ``config.json`` file, or the name
    of one shipped in ``promptdistill_rag/bench/architectures``, such as
    ``llama-3-8b``: the shape of Llama 3 8B), else from
    ``model`` (a local checkpoint folder or a Hub id, of which only the config
    is read), else from the default model. The model is built on the GPU in
    bfloat16 when one is available, else on the CPU in float32, with SDPA
    attention. The tokenizer is the default model's, so its ids may exceed
    the architecture's vocabulary: callers clip them (``vocab_size``).

    Raises:
        FileNotFoundError: If ``config_json`` does not exist.
        ValueError: If the architecture is not supported.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..engine import PromptDistillEngine, check_model_type
    from ..testing import default_tokenizer

    if config_json is not None:
        shipped = os.path.join(os.path.dirname(__file__), "architectures", f"{config_json}.json")
        if not os.path.isfile(config_json) and os.path.isfile(shipped):
            config_json = shipped
        if not os.path.isfile(config_json):
            names = sorted(name.removesuffix(".json") for name in os.listdir(os.path.dirname(shipped)))
            msg = (
                f"--config-json {config_json} not found; pass a model's config.json file "
                f"or one of the shipped architectures: {', '.join(names)}"
            )
            raise FileNotFoundError(msg)
        source = config_json
    elif model:
        source = model
    else:
        from ..default_model import default_model_path

        source = str(default_model_path())
    config = AutoConfig.from_pretrained(source, local_files_only=os.path.exists(source))
    check_model_type(config.model_type)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logger.warning(
        "Building %s (%s, %d layers) with random weights on %s in %s: the generated text is noise, "
        "only times and memory are meaningful",
        source,
        config.model_type,
        config.num_hidden_layers,
        device,
        str(dtype).removeprefix("torch."),
    )
    torch.manual_seed(seed)
    # Initialising on the target device avoids a CPU copy of an 8B model's weights.
    with torch.device(device):
        network = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return PromptDistillEngine(network, default_tokenizer(), model_name=f"{source} (random weights)")
