"""The training fast path's precision (issue 27, `train.fast_path`): the frozen base held in the compute precision,
and attention whose backward pass runs in fp32.

Under `torch.autocast` (train.precision=bf16, the committed records' way) every weight stays fp32 and each matrix
product casts its fp32 weight to bf16 again at every call: autocast caches a cast only for a parameter that requires a
gradient, so a frozen base (LoRA's W0, an adapter's backbone) is re-cast at every forward. With the fast path the frozen
floating-point parameters are stored in bf16 once (`hold_frozen`): no cast per step, half the weight memory, the same
bf16 matrix products autocast computes. Trainable parameters (LoRA's A and B, adapters, heads, every weight under FT),
their gradients and the optimizer state stay fp32; buffers (Llama's rotary frequencies) are left as they are.

Attention (`FP32_BACKWARD_ATTENTION`): on this CPU, torch's flash attention backward in bf16 takes about twice as long
as in fp32 (8 x 128 tokens, SmolLM2's 9 query / 3 key-value heads: 37 ms against 16 ms fwd + bwd, one thread) while
the forward is faster in bf16. The attention function registered here is transformers' own SDPA attention, called on
fp32 copies of q, k, v where a backward pass will follow (grad enabled and an input requiring it), its output cast
back; without grad (evaluation, decoding) it is SDPA as is. fp32 attention is also the more exact of the two.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.pytorch_utils import Conv1D

FP32_BACKWARD_ATTENTION = "sdpa_fp32_backward"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the matrix products under train.precision (fp32, bf16, fp16)."""
    return DTYPES[precision]


MATRIX_PRODUCTS = (nn.Linear, Conv1D)  # autocast casts all their operands (linear, addmm) to the compute dtype


def hold_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen floating-point parameters of `model` in `dtype`, in place (a tied parameter, e.g. the
    embedding shared with the LM head, is one Parameter and stays tied): those of a matrix-product module (autocast
    casts every operand of a linear layer, so LoRA's W0 beside its fp32 A and B is fine) and those of any module whose
    own parameters are all frozen. A frozen parameter beside a trainable one in another op (BitFit's LayerNorm: a
    frozen weight, a trained bias) stays fp32, since that op needs both in one dtype. Returns the elements cast."""
    moved = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        together = isinstance(module, MATRIX_PRODUCTS) or not any(p.requires_grad for p in own)
        for p in own:
            if together and not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                moved += p.numel()
    return moved


def sdpa_fp32_backward(module, query, key, value, attention_mask, *args, **kwargs):
    """transformers' SDPA attention; in fp32 when a backward pass will follow and the inputs are in half precision."""
    half = query.dtype in (torch.bfloat16, torch.float16)
    if not (half and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    out, weights = sdpa_attention_forward(
        module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs
    )
    return out.to(query.dtype), weights


AttentionInterface.register(FP32_BACKWARD_ATTENTION, sdpa_fp32_backward)


def use_fp32_backward_attention(model: nn.Module) -> bool:
    """Switch a model that attends with SDPA to FP32_BACKWARD_ATTENTION; False (unchanged) for any other attention
    implementation (eager, a model without transformers' attention interface)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(FP32_BACKWARD_ATTENTION)
    return True


def prepare_fast_path(model: nn.Module, precision: str) -> dict:
    """The fast path's changes to a model about to train in `precision`: frozen parameters held in its compute dtype,
    fp32-backward attention where the compute dtype is half. Returns what it did (for the record)."""
    dtype = compute_dtype(precision)
    return {
        "frozen_dtype": str(dtype).removeprefix("torch."),
        "frozen_elements_cast": hold_frozen(model, dtype),
        "fp32_backward_attention": dtype != torch.float32 and use_fp32_backward_attention(model),
    }
