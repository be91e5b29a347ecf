"""The paper's adaptation methods (Section 5.1), one small module per family, mapped by name in `registry`.

A method is `apply(model, cfg) -> model`: it performs the model surgery and marks exactly the right parameters
trainable. Families: finetune (ft, fttop2, bitfit), adapters (adapter_h, adapter_l, adapter_p, adapter_d),
prefix (prefix_embed, prefix_layer), lora and its variants: lora (rsLoRA: `rslora: true`, PiSSA: `init: pissa`,
`targets: all_linear`), dora, qlora (a 4-bit NF4 base, bitsandbytes), adalora (through PEFT). Low-rank modules expose
`delta_weight(module)` and explicit `merge()` / `unmerge()` / `merged()` (repro.methods.lora); `delta_weights(model)`
gives ΔW for every variant; checkpoints: repro.methods.checkpoint.
"""

from repro.methods.common import parameter_counts  # noqa: F401
from repro.methods.registry import METHODS, apply_method  # noqa: F401
