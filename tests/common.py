"""Tiny random models for tests, several architectures (like mergekit's tests/common.py).

Every model is a few layers with hidden size 32-64 and a 512-token byte-level
BPE tokenizer trained on a fixed text, saved as a standard HF directory.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

VOCAB = 512
TINY_LAYERS = 6

#: model_type -> config overrides; small but structurally faithful.
ARCHS: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=3,
    ),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "mistral": dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=16
    ),
    "gemma2": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        query_pre_attn_scalar=8,
    ),
    "gemma3_text": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,
        query_pre_attn_scalar=8,
        sliding_window_pattern=3,
    ),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
    "gpt2": dict(n_embd=32, n_head=4, n_positions=128),
    "olmo2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
}
TIED_ARCHS = {"gpt2", "gemma2", "gemma3_text"}

TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n"
    "import os\nimport sys\nclass Foo(object):\n    pass\n"
    "Boomerang distillation builds a family of models from one teacher and one student.\n"
) * 4


BOS = "<s>"
BOS_ID = 2  # in the tokenizer that adds a BOS (``save_tokenizer(path, add_bos=True)``)


@functools.lru_cache(maxsize=2)
def _tokenizer_json(add_bos: bool = False) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<pad>"] + ([BOS] if add_bos else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer)
    if add_bos:  # like Llama 3 or Gemma: every encoded text starts with BOS
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, BOS_ID)])
    return tok.to_str()


def save_tokenizer(path: Path, add_bos: bool = False) -> None:
    """The tiny tokenizer; ``add_bos``: one that puts a BOS (``<s>``, id 2) before every text."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(add_bos)),
        eos_token="<|endoftext|>",
        bos_token=BOS if add_bos else "<|endoftext|>",
        pad_token="<pad>",
    )
    tok.save_pretrained(str(path))


def tiny_config(model_type: str, layers: int = TINY_LAYERS, **overrides: Any):
    from transformers import AutoConfig

    kw = dict(ARCHS[model_type])
    if model_type == "gpt2":
        kw["n_layer"] = layers
    else:
        kw["num_hidden_layers"] = layers
        kw.setdefault("max_position_embeddings", 128)
    kw.update(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    kw["tie_word_embeddings"] = model_type in TIED_ARCHS
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def make_model(model_type: str, layers: int = TINY_LAYERS, seed: int = 0, **overrides: Any):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides))
    # Random init leaves norms at 1 and biases at 0; perturb everything so that
    # tests notice any tensor taken from the wrong place.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def perturb_saved(path: Path, seed: int, layer_types: list[str] | None = None) -> None:
    """Stand-in for distillation: every weight of a saved model moves a little (embeddings included)."""
    model = load(path)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if layer_types is not None:
        model.config.layer_types = layer_types
    model.save_pretrained(str(path))


def save_model(model, path: Path, tokenizer: bool = True) -> Path:
    path = Path(path)
    model.save_pretrained(str(path))
    if tokenizer:
        save_tokenizer(path)
    return path


def tiny_model_dir(tmp: Path, model_type: str, layers: int = TINY_LAYERS, seed: int = 0, **overrides: Any) -> Path:
    return save_model(make_model(model_type, layers, seed, **overrides), Path(tmp) / f"{model_type}-{seed}")


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def sample_ids(n: int = 2, t: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (n, t), generator=g)
