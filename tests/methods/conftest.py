"""Tiny random models of each architecture (no download) and method configs from conf/method/."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from repro.config import load_group

ENCODERS = ("roberta", "bert", "deberta-v2")
DECODERS = ("gpt2", "llama")  # llama: SmolLM2's architecture (grouped-query attention, no biases, RMSNorm, gated MLP)
ARCHS = (*ENCODERS, *DECODERS)


def tiny(
    model_type: str, seed: int = 0, num_labels: int = 3, hidden: int = 32, ffn: int | None = None
) -> torch.nn.Module:
    """hidden / ffn: d_model and the MLP width (defaults 32 and 2·hidden, Llama 1.5·hidden)."""
    torch.manual_seed(seed)
    if model_type == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2",
            n_layer=3,
            n_embd=hidden,
            n_head=4,
            n_inner=ffn,
            vocab_size=120,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
        return AutoModelForCausalLM.from_config(cfg).eval()
    if model_type == "llama":  # 4 query heads, 2 key/value heads: W_k, W_v are hidden -> hidden / 2
        cfg = AutoConfig.for_model(
            "llama",
            num_hidden_layers=3,
            hidden_size=hidden,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=ffn or 2 * hidden,
            vocab_size=120,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=True,
        )
        return AutoModelForCausalLM.from_config(cfg).eval()
    cfg = AutoConfig.for_model(
        model_type,
        num_hidden_layers=3,
        hidden_size=hidden,
        num_attention_heads=4,
        intermediate_size=ffn or 2 * hidden,
        vocab_size=120,
        num_labels=num_labels,
        pooler_hidden_size=hidden,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def method(name: str, **overrides):
    return load_group("method", name, **overrides)


def batch(model_type: str, seed: int = 1, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 120, (2, T), generator=g)
    if model_type in DECODERS:
        labels = ids.clone()
        labels[:, :4] = -100
        return {"input_ids": ids, "labels": labels}
    return {"input_ids": ids, "labels": torch.tensor([0, 2])}


def randomize_B(model, std: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def tiny_model():
    return tiny
