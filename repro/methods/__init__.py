"""The paper's adaptation methods (Section 5.1), one small module per family, mapped by name in `registry`.

A method is `apply(model, cfg) -> model`: it performs the model surgery and marks exactly the right parameters
trainable. Families: finetune (ft, fttop2, bitfit), adapters (adapter_h, adapter_l, adapter_p, adapter_d),
prefix (prefix_embed, prefix_layer), lora and its variants: lora (rsLoRA: `rslora: true`, PiSSA: `init: pissa`,
`targets: all_linear`), dora, qlora (a 4-bit NF4 base, bitsandbytes), adalora (through PEFT). Low-rank modules expose
`delta_weight(module)` and explicit `merge()` / `unmerge()` / `merged()` (repro.methods.lora); `delta_weights(model)`
gives ΔW for every variant; checkpoints: repro.methods.checkpoint.

`from repro.methods import apply_method, METHODS, parameter_counts` loads the registry (every family, and through
AdaLoRA's Trainer callback transformers' Trainer, which imports PEFT when it is installed) on first use, not when
the package is imported: a light module of the package (repro.methods.common) stays light for a command's start-up.
"""


def __getattr__(name: str):
    # PEP 562: the package's names load on first use (see the docstring); imports here, not at the top, for that
    if name == "parameter_counts":
        from repro.methods.common import parameter_counts

        return parameter_counts
    if name in ("METHODS", "apply_method"):
        from repro.methods import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'repro.methods' has no attribute {name!r}")
