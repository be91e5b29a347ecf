"""The paper's adaptation methods (Section 5.1), one small module per family, mapped by name in `registry`.

A method is `apply(model, cfg) -> model`: it performs the model surgery and marks exactly the right parameters
trainable. Low-rank methods also expose `delta_weight(module) -> Tensor` and explicit `merge()` / `unmerge()`.
"""

from repro.methods.registry import METHODS, apply_method  # noqa: F401
from repro.methods.common import parameter_counts  # noqa: F401
