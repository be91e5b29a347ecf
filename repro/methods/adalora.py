"""AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"), run through PEFT.

    W = W0 + ΔW = W0 + P Λ Q            (P = lora_B: d_out × r, Λ = diag(lora_E), Q = lora_A: r × d_in)
    h = W0 x + (alpha / r_k) · P (Λ ⊙ Q) x,   r_k = ranknum (PEFT: scaling · B (A ⊙ E) / (ranknum + 1e-5))

Training prunes the triplets (P_i, λ_i, Q_i) of lowest importance (sensitivity |w · ∇w| smoothed by EMAs,
beta1/beta2) from a budget of init_r per matrix down to target_r on average, with a cubic schedule
(init_r budget up to step tinit, down to target_r at step total_step − tfinal, re-allocated every deltaT steps),
and adds the orthogonality penalty R(P, Q) = ‖PᵀP − I‖_F² + ‖QQᵀ − I‖_F² (PEFT: the mean of the Frobenius norms) with
weight orth_reg_weight.

Why PEFT and not a port: the method is the SVD parametrisation *plus* a stateful allocator (importance EMAs,
uncertainty, the budget schedule, masking after the last allocation) whose exact semantics are in PEFT's
RankAllocator; a port would be ~300 lines to maintain against the same oracle we would test it with. The parts the
suite owns are small and are here: the surgery (PEFT's AdaLoraModel injected in place into our model, so parameter
names, the task head and checkpoints stay ours), the orthogonality penalty (`loss_term`: what AdaLoraModel.forward adds
to each forward's loss; our Trainers compute the task loss outside the model, so ReproTrainer.compute_loss adds it, once
per optimizer step under gradient accumulation, through repro.methods.registry.loss_term), and the Trainer callback
that calls `update_and_allocate(step)` after `optimizer.step()` and before `zero_grad()` (it reads the gradients).

Rules (shared/research/variants.md): the allocated ranks are `rank_pattern()` (PEFT's config.rank_pattern), not the
non-zero entries of E (pruned entries regrow under AdamW between allocations); the final mask is applied only at step
total_step − tfinal, so `total_step` is the Trainer's max_steps (set at train begin; a run must reach it); the penalty
is added by the trainer (repro.train.ReproTrainer; an optimizer step without it raises); a run resumed from a Trainer checkpoint restarts the
importance EMAs (they are not checkpointed). Keys: `<module>.lora_{A,B,E}.default` (trained), ΔW: `delta_weights`.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from transformers import TrainerCallback

from repro.errors import CellMismatch
from repro.methods.common import mark_trainable
from repro.methods.targets import BLOCK_MODULES, FUSED_QKV, block_prefix, blocks, model_type, resolve_targets

TUNER = "_adalora_tuner"  # model attribute (not a submodule: parameter names stay the model's own)


def target_module_names(model: nn.Module, targets) -> list[str]:
    """Full module names for PEFT. GPT-2's q, k, v share c_attn: AdaLoRA adapts it whole, so all three or none."""
    mt = model_type(model)
    ts = resolve_targets(model, targets)
    fused = FUSED_QKV.get(mt)
    if fused and {"q", "k", "v"} & set(ts) and not {"q", "k", "v"} <= set(ts):
        raise CellMismatch(f"AdaLoRA on {mt}: q, k, v are one fused {fused[0]} (one SVD triplet set); target all three")
    paths = list(dict.fromkeys(BLOCK_MODULES[mt][t] for t in ts))
    prefix = block_prefix(model)
    return [f"{prefix}.{i}.{p}" for i in range(len(blocks(model))) for p in paths]


def _orth_penalty(model: nn.Module) -> torch.Tensor:
    """PEFT's AdaLoraModel.forward: mean over lora_A (A Aᵀ) and lora_B (Bᵀ B) of ‖cov − I‖_F."""
    total, n = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and "default" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device), p="fro")
            n += 1
    return total / n if n else total


def loss_term(model: nn.Module) -> torch.Tensor:
    """orth_reg_weight · R(P, Q): what AdaLoraModel.forward adds to each forward's loss. The model's own forward does not
    add it (its loss is computed outside the model, compute_loss_func): ReproTrainer.compute_loss adds it to the
    training loss (registry.loss_term), and calling this marks the step as having it (AdaLoraCallback checks)."""
    model._adalora_penalty_added = True
    return getattr(model, TUNER).peft_config["default"].orth_reg_weight * _orth_penalty(model)


class AdaLoraCallback(TrainerCallback):
    """update_and_allocate(step) after optimizer.step(), before zero_grad() (Trainer: on_optimizer_step, where
    state.global_step is the 0-based index of the step just taken)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        cfg = getattr(model, TUNER).peft_config["default"]
        cfg.total_step = state.max_steps  # the final mask is applied at total_step − tfinal: the run must reach it
        if not (0 <= cfg.tinit < cfg.total_step - cfg.tfinal and cfg.tfinal >= 1):  # steps run 0 .. total_step − 1
            raise CellMismatch(
                f"AdaLoRA: tinit={cfg.tinit}, tfinal={cfg.tfinal} (>= 1) do not fit {cfg.total_step} "
                f"steps: the final allocation at step total_step − tfinal must be reached"
            )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        tuner = getattr(model, TUNER)
        if tuner.peft_config["default"].orth_reg_weight > 0 and not getattr(model, "_adalora_penalty_added", False):
            raise CellMismatch(
                "AdaLoRA: the orthogonality penalty was not added to the training loss (train with "
                "repro.train.ReproTrainer, which adds adalora.loss_term; or set orth_reg_weight: 0)"
            )
        model._adalora_penalty_added = False
        with torch.no_grad():
            tuner.update_and_allocate(state.global_step)


def apply_adalora(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """PEFT's AdaLoRA SVD layers on `targets` of every block, injected into `model` itself; task head trainable."""
    from peft import AdaLoraConfig  # optional dependency (pip install .[adalora]): only method=adalora needs it
    from peft.tuners.adalora import AdaLoraModel

    total = cfg.get("total_step") or 10**9  # replaced by the Trainer's max_steps at train begin
    pcfg = AdaLoraConfig(
        init_r=int(cfg.init_r),
        target_r=int(cfg.target_r),
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.get("dropout", 0.0),
        tinit=int(cfg.tinit),
        tfinal=int(cfg.tfinal),
        deltaT=int(cfg.deltaT),
        beta1=cfg.get("beta1", 0.85),
        beta2=cfg.get("beta2", 0.85),
        orth_reg_weight=cfg.get("orth_reg_weight", 0.5),
        total_step=int(total),
        target_modules=target_module_names(model, cfg.targets),
        fan_in_fan_out=model.config.model_type == "gpt2",
    )
    tuner = AdaLoraModel(model, {"default": pcfg}, "default")  # injects SVDLinear modules into `model` in place
    object.__setattr__(model, TUNER, tuner)
    mark_trainable(model, lambda n: ".lora_" in n and ".default" in n)  # A, B, E (ranknum stays frozen)
    model.repro_loss_term = loss_term  # added to the training loss by ReproTrainer (registry.loss_term)
    model.repro_callbacks = [AdaLoraCallback()]
    return model


def rank_pattern(model: nn.Module) -> dict[str, int]:
    """{module name: allocated rank} from PEFT's config (empty before the first allocation)."""
    pattern = getattr(model, TUNER).peft_config["default"].rank_pattern or {}
    return {k.removesuffix(".default").removesuffix(".lora_E"): int(sum(v)) for k, v in pattern.items()}


def adalora_modules(model: nn.Module):
    from peft.tuners.adalora.layer import SVDLinear  # optional dependency, as in apply_adalora

    for name, module in model.named_modules():
        if isinstance(module, SVDLinear):
            yield name, next(int(p) for p in name.split(".") if p.isdigit()), module


def delta_weights(model: nn.Module):
    """(layer, target, ΔW = (alpha/r_k) P (Λ ⊙ Q), fp32, d_out × d_in) per adapted matrix; GPT-2's c_attn split q|k|v."""
    mt = model.config.model_type
    by_path = {}
    for t, p in BLOCK_MODULES[mt].items():
        by_path.setdefault(p, []).append(t)
    for name, layer, module in adalora_modules(model):
        path = name.split(f".{layer}.", 1)[1]
        dw = module.get_delta_weight("default").float()
        if mt == "gpt2":
            dw = dw.T  # PEFT returns the stored (d_in × d_out) layout for Conv1D
        ts = by_path[path]
        d = dw.shape[0] // len(ts)
        for i, t in enumerate(ts):
            yield layer, t, dw[i * d : (i + 1) * d]
