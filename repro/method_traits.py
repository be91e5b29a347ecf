"""What kind of adaptation each method is, as plain data: one entry per method name (the Hydra option under
conf/method/, its field `name`), the same names as the registry (repro.methods.registry: name -> the function that
adapts a model; tests/methods/test_methods.py checks they agree). Every list of methods that share a trait is derived
here, once; the schema and the planner read them without importing torch (this module imports nothing heavy).

Traits:
  variant       one of issue 14's LoRA variants (all-linear, rsLoRA, PiSSA, DoRA, QLoRA, AdaLoRA): a table runs it only
                where a row names it (a stand-in model does not pick it up by default, repro.plan.grid.row_variants)
  decoder_only  implemented for decoders only (prefix tuning: GPT-2, Llama); the schema refuses it on an encoder
  full_update   trains every weight of the backbone: the backward pass computes every weight gradient (the planner's
                FLOP factor k = 6 instead of 4, and all parameters trainable when a method does not build)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodTraits:
    variant: bool = False
    decoder_only: bool = False
    full_update: bool = False


# in the order the tables list them; the LoRA variants in the order of repro.params --variants (same shapes as LoRA,
# + DoRA's magnitude, all linear layers, AdaLoRA)
TRAITS: dict[str, MethodTraits] = {
    "ft": MethodTraits(full_update=True),
    "fttop2": MethodTraits(),
    "bitfit": MethodTraits(),
    "adapter_h": MethodTraits(),
    "adapter_l": MethodTraits(),
    "adapter_p": MethodTraits(),
    "adapter_d": MethodTraits(),
    "prefix_embed": MethodTraits(decoder_only=True),
    "prefix_layer": MethodTraits(decoder_only=True),
    "lora": MethodTraits(),
    "rslora": MethodTraits(variant=True),
    "pissa": MethodTraits(variant=True),
    "dora": MethodTraits(variant=True),
    "lora_all_linear": MethodTraits(variant=True),
    "qlora": MethodTraits(variant=True),
    "adalora": MethodTraits(variant=True),
}

VARIANT_METHODS = tuple(name for name, t in TRAITS.items() if t.variant)
DECODER_ONLY = tuple(name for name, t in TRAITS.items() if t.decoder_only)
FULL_UPDATE_METHODS = tuple(name for name, t in TRAITS.items() if t.full_update)
