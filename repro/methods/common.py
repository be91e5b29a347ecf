"""Helpers shared by every method: which parameters form the task head, marking parameters trainable, and the
parameter counts the tables report."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# The task head is trained under every method, as in the paper's run_glue.py, but the paper's |Θ| leaves it out
# (microsoft/LoRA issue #16): RoBERTa's classifier (dense + out_proj), DeBERTa's pooler + classifier, BERT's
# pooler + classifier. GPT-2's LM head is tied to the input embedding and is not a head in this sense.
HEAD_PREFIXES = ("classifier.", "pooler.", "bert.pooler.", "score.")


def is_head(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def mark_trainable(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    """requires_grad = keep(name) or is_head(name), for every parameter."""
    for name, p in model.named_parameters():
        p.requires_grad = bool(keep(name)) or is_head(name)
    return model


def freeze_all_but_head(model: nn.Module) -> None:
    mark_trainable(model, lambda name: False)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """trainable = what the optimizer trains; `adapter` is what the paper's tables count as |Θ| (for FT: all but the
    head): trainable - head, except where a module trains a reparametrization of what it keeps and says how much it
    keeps (`kept_numel`: PreLayer through Li & Liang's MLP keeps the prefix, L x d x l_p; its MLP is dropped after
    training): there |Θ| counts what is kept and `trainable` also counts the MLP."""
    trainable = head = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            head += p.numel() if is_head(name) else 0
    adapter = trainable - head
    for m in model.modules():
        if hasattr(m, "kept_numel"):
            adapter += m.kept_numel() - sum(p.numel() for p in m.parameters() if p.requires_grad)
    return {
        "trainable_params": trainable,
        "adapter_params": adapter,
        "head_params": head,
        "total_params": total,
    }


def trainable_state_dict(model: nn.Module) -> dict:
    """Exactly the trained tensors: the adapter (or all weights, for FT) and the task head."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
