"""Prefix tuning baselines (Section 5.1, after Li & Liang 2021), for decoders (GPT-2, Llama/SmolLM2; the paper uses
them on GPT-2 and GPT-3 only).

l_p special tokens are put before the prompt ("prefixing") and l_i after it ("infixing"), i.e. right before the
first supervised token: [P_1..P_lp] context [I_1..I_li] completion. The special tokens are not in the vocabulary:

* PreEmbed (prefix_embed): their input embeddings are trainable.                  |Θ| = d_model × (l_p + l_i)
* PreLayer (prefix_layer): their activations entering every Transformer block are trainable; what earlier layers
  computed at those positions is simply replaced (the hidden state entering block 0 is the embedding layer's
  output, so no separate embedding is trained).                                   |Θ| = L × d_model × (l_p + l_i)

Implementation: a forward pre-hook on the LM rewrites its inputs (inputs_embeds, attention_mask, position_ids and
labels get the l_p + l_i extra positions; labels there are -100), and for PreLayer a pre-hook on every block
writes the trainable vectors into the hidden states at those positions. Later tokens see them through attention,
so at decoding time they sit in the KV cache like real tokens (the hook only widens the attention mask then).
The returned logits keep the extra positions (the last position still predicts the next token).
Where the context ends: the first position whose label is not -100 in training, the end of the input when there
are no labels (generation: the whole input is the prompt, left-padded).
Initialisation (`init`): real_tokens (the default), the activations/embeddings of random real vocabulary tokens (Li &
Liang Sec. 7.2: real-word init is more stable); random, N(0, 1).

Li & Liang's MLP reparametrization (`reparam: mlp`; their Sec. 4.3, "directly updating the P_θ parameters leads to
unstable optimization"): the prefix is not trained directly but computed, P_θ[i,:] = MLP_θ(P'_θ[i,:]), from a
smaller matrix P' (one row per special token) through MLP = Linear(d_model, mid_dim) -> tanh -> Linear(mid_dim, L x
d_model) (PreLayer: one d_model vector per block; PreEmbed: Linear(mid_dim, d_model)). As in their code
(XiangLi1999/PrefixTuning, gpt2/train_control.py, class PrefixTuning, `control_trans`, and PrefixEmbTuning for the
embedding variant): P' is d_model wide (an nn.Embedding of l_p rows; their paper's footnote calls the narrow side
k = 512, which their code puts in the MLP's hidden width, `mid_dim`, default 512 in train_e2e.py), initialised as
PyTorch initialises an nn.Embedding (N(0, 1)) and the MLP as nn.Linear does. With `init: random` that is all (their
full-data runs); with `init: real_tokens` the MLP's output layer is then solved so that MLP(P') is exactly the
real-token prefix the plain method starts from (their low-data init fits the MLP to real words' activations by 500
Adam steps on an MSE, `lowdata_init_train3`; here in closed form: `init_from_real_tokens`). On SmolLM2 a random
prefix, in the positions every later token attends to first, wrecks the model: in two short E2E probes (l_p=13, lr
1e-3, bf16) the random start logged a training loss of 9.4 over its first 10 steps and a dev loss of 6.6 at step 15
(6.2 at 30), the real-token start 4.8 over its first 4 steps and 3.0 at step 12 (2.6 at 24): real_tokens is the
default for both.
At the end of training the MLP is dropped (`drop_reparametrization`, run by the Trainer callback
the method registers): the prefix it computes becomes the trained tensor, under the name the plain method uses
(`prefix_tuning.activations` / `.embedding`), so decoding, the saved checkpoint and |Θ| are the prefix alone, as Li
& Liang count it (L x d_model x (l_p + l_i) for PreLayer); `parameter_counts` reports that as the adapter's
parameters and the training-time count (P' and the MLP) as the trainable ones (`kept_numel`).

The keys and values of the special positions are computed by each block's own W_k, W_v from the trained activations,
so they always have the model's key/value shape: on Llama with grouped-query attention (SmolLM2-135M: 3 key/value
heads of 64 for 9 query heads) each layer's cache holds (batch, n_kv_heads, l_p + l_i + T, head_dim) (tested).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn
from transformers import TrainerCallback

from repro.errors import CellMismatch
from repro.methods.common import mark_trainable
from repro.methods.targets import blocks

DECODERS = ("gpt2", "llama")


class PrefixTuning(nn.Module):
    """The special tokens' trained vectors: `embedding` (n, d) for PreEmbed, `activations` (L, n, d) for PreLayer,
    n = l_p + l_i; with `reparam="mlp"` they are computed, MLP(P'), until `drop_reparametrization`."""

    def __init__(
        self,
        mode: str,
        l_p: int,
        l_i: int,
        n_layers: int,
        d_model: int,
        like: torch.Tensor,
        reparam: str | None = None,
        mid_dim: int = 512,
        seed: int = 0,
    ):
        super().__init__()
        if l_p < 0 or l_i < 0 or l_p + l_i == 0:
            raise CellMismatch(f"prefix tuning needs l_p >= 0, l_i >= 0 and l_p + l_i > 0 (got l_p={l_p}, l_i={l_i})")
        if reparam not in (None, "mlp"):
            raise CellMismatch(f"method.reparam={reparam!r}; allowed: null (the prefix trained directly), mlp")
        self.mode, self.l_p, self.l_i, self.n = mode, l_p, l_i, l_p + l_i
        self.name = "embedding" if mode == "embed" else "activations"
        self.shape = (self.n, d_model) if mode == "embed" else (n_layers, self.n, d_model)
        kw = {"device": like.device, "dtype": like.dtype}
        if reparam == "mlp":
            with torch.random.fork_rng(devices=[]):  # the init depends on init_seed alone, not on the global RNG
                torch.manual_seed(seed)
                self.prefix_input = nn.Parameter(torch.randn(self.n, d_model, **kw))  # P', as nn.Embedding inits it
                out = d_model if mode == "embed" else n_layers * d_model
                self.mlp = nn.Sequential(nn.Linear(d_model, mid_dim, **kw), nn.Tanh(), nn.Linear(mid_dim, out, **kw))
        else:
            self.register_parameter(self.name, nn.Parameter(torch.zeros(self.shape, **kw)))
        self.slots: torch.Tensor | None = None  # (B, T + n): slot index of each position, -1 for real tokens
        self.current: torch.Tensor | None = None  # PreLayer: the prefix of the forward pass under way

    @property
    def reparametrized(self) -> bool:
        return hasattr(self, "mlp")

    def prefix(self) -> torch.Tensor:
        """The trained vectors, (n, d) or (L, n, d): the parameter itself, or MLP(P') while reparametrized."""
        if not self.reparametrized:
            return getattr(self, self.name)
        out = self.mlp(self.prefix_input)  # (n, L·d) or (n, d): Li & Liang's layout, the layer index outermost
        return out if self.mode == "embed" else out.view(self.n, self.shape[0], self.shape[2]).transpose(0, 1)

    def kept_numel(self) -> int:
        """|Θ| as Li & Liang count it: the prefix that remains after training, not the MLP that trains it."""
        return math.prod(self.shape)

    @torch.no_grad()
    def drop_reparametrization(self) -> None:
        """P := MLP(P'), stored as the trained tensor (fp32, outside any autocast); P' and the MLP are deleted. Then the
        module is the plain method's, with the same parameter names and shapes. A no-op when not reparametrized."""
        if not self.reparametrized:
            return
        with torch.autocast(self.prefix_input.device.type, enabled=False):
            kept = self.prefix().detach().clone().contiguous()
        del self.mlp, self.prefix_input
        self.register_parameter(self.name, nn.Parameter(kept))
        self.current = None

    @torch.no_grad()
    def init_from_real_tokens(self, lm: nn.Module, seed: int = 0) -> None:
        """The prefix := the embeddings (PreEmbed) or the activations entering every block (PreLayer) of n random
        vocabulary tokens. Reparametrized: P', W_1, b_1 and b_2 stay as initialised and W_2 is the least-norm solution
        of H W_2^T = real - b_2, H = tanh(P' W_1^T + b_1) (n x mid_dim): exact when n <= mid_dim (H has full row
        rank), the least-squares fit otherwise."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, lm.config.vocab_size, (1, self.n), generator=g).to(lm.device)
        if self.mode == "embed":
            real = lm.get_input_embeddings()(ids)[0]
        else:
            self.slots = None
            out = lm.base_model(input_ids=ids, output_hidden_states=True, use_cache=False)
            real = torch.stack(
                [out.hidden_states[i][0] for i in range(self.shape[0])]
            )  # hidden_states[i] enters block i
        if not self.reparametrized:
            getattr(self, self.name).copy_(real)
            return
        target = real if self.mode == "embed" else real.transpose(0, 1).reshape(self.n, -1)  # MLP(P')'s layout
        first, last = self.mlp[0], self.mlp[2]
        h = torch.tanh(first(self.prefix_input)).double()
        w2 = torch.linalg.pinv(h) @ (target.double() - last.bias.double())  # (mid_dim, out)
        last.weight.copy_(w2.T.to(last.weight.dtype))

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """`init: random`: the prefix ~ N(0, 1) (reparametrized: P' and the MLP as constructed, already so)."""
        if not self.reparametrized:
            g = torch.Generator().manual_seed(seed)
            p = getattr(self, self.name)
            p.copy_(torch.randn(p.shape, generator=g).to(p.dtype))


class DropReparametrization(TrainerCallback):
    """At the end of training (after the Trainer has loaded the best checkpoint, if it selects one), the MLP goes and
    the prefix it computes stays: what the dev loss is evaluated on, what decodes, what the checkpoint holds."""

    def __init__(self, pt: PrefixTuning):
        self.pt = pt

    def on_train_end(self, args, state, control, **kwargs):
        self.pt.drop_reparametrization()


def _expand_inputs(pt: PrefixTuning, lm: nn.Module, args, kwargs):
    """Insert the l_p prefix and l_i infix positions into the LM's inputs (see the module docstring)."""
    kwargs = dict(kwargs)
    if args:
        kwargs["input_ids"] = args[0]
    ids, embeds = kwargs.pop("input_ids", None), kwargs.get("inputs_embeds")
    embeds = lm.get_input_embeddings()(ids) if embeds is None else embeds
    B, T, _ = embeds.shape
    past = kwargs.get("past_key_values")
    mask = kwargs.get("attention_mask")
    mask = torch.ones(B, T, dtype=torch.long, device=embeds.device) if mask is None else mask
    kwargs["inputs_embeds"] = embeds
    if past is not None and past.get_seq_length() > 0:  # decoding with a cache: the special tokens are in it
        pt.slots = pt.current = None
        need = past.get_seq_length() + T  # generate's mask lacks the l_p + l_i special positions: visible
        if mask.shape[1] < need:
            mask = torch.cat([mask.new_ones(B, need - mask.shape[1]), mask], dim=1)
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, -T:]
        return (), kwargs
    labels = kwargs.get("labels")
    n, l_p, l_i = pt.n, pt.l_p, pt.l_i
    if labels is not None and l_i:
        supervised = labels != -100
        ctx = torch.where(
            supervised.any(1), supervised.float().argmax(1), torch.full_like(supervised[:, 0], T, dtype=torch.long)
        )
    else:
        ctx = torch.full((B,), T, dtype=torch.long, device=embeds.device)
    t = torch.arange(T, device=embeds.device).expand(B, T)
    new_pos = t + l_p + l_i * (t >= ctx[:, None])  # where each real token goes
    rows = torch.arange(B, device=embeds.device)[:, None]
    slots = torch.full((B, T + n), -1, dtype=torch.long, device=embeds.device)
    slots[:, :l_p] = torch.arange(l_p, device=embeds.device)
    if l_i:
        infix = l_p + ctx[:, None] + torch.arange(l_i, device=embeds.device)
        slots[rows, infix] = l_p + torch.arange(l_i, device=embeds.device)
    prefix = pt.prefix()  # once per forward pass (through the MLP while reparametrized)
    if pt.mode == "embed":
        new_embeds = prefix.to(embeds.dtype)[slots.clamp(min=0)]
    else:  # replaced at the entry of block 0 by the trainable activations
        new_embeds = embeds.new_zeros(B, T + n, embeds.shape[-1])
    new_embeds = new_embeds.index_put((rows.expand(B, T), new_pos), embeds)
    new_mask = mask.new_ones(B, T + n).index_put((rows.expand(B, T), new_pos), mask)
    kwargs.update(
        inputs_embeds=new_embeds, attention_mask=new_mask, position_ids=(new_mask.cumsum(-1) - 1).clamp(min=0)
    )
    if labels is not None:
        kwargs["labels"] = labels.new_full((B, T + n), -100).index_put((rows.expand(B, T), new_pos), labels)
    pt.slots = slots if pt.mode == "layer" else None
    pt.current = prefix if pt.mode == "layer" else None
    return (), kwargs


def _replace_activations(pt: PrefixTuning, layer: int, block: nn.Module, args, kwargs):
    """PreLayer: the hidden state entering `block` at the special positions := the trainable activations."""
    if pt.slots is None:
        return None
    hidden = args[0] if args else kwargs["hidden_states"]
    trained = pt.current[layer].to(hidden.dtype)[pt.slots.clamp(min=0)]
    hidden = torch.where((pt.slots >= 0)[..., None], trained, hidden)
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def apply_prefix(model: nn.Module, cfg: DictConfig) -> nn.Module:
    mode = cfg.get("mode") or {"prefix_embed": "embed", "prefix_layer": "layer"}.get(cfg.name)
    if mode not in ("embed", "layer"):
        raise CellMismatch(f"method.mode={mode!r}; allowed: embed (PreEmbed), layer (PreLayer)")
    if model.config.model_type not in DECODERS or not hasattr(model, "lm_head"):
        raise CellMismatch(
            f"method={cfg.name} (prefix tuning) is implemented for decoders (GPT-2 and Llama causal LMs), as the paper "
            f"uses it (GPT-2 Tables 3/13/14, GPT-3 Table 4); got {type(model).__name__}. For encoders use lora, adapter_*, "
            "bitfit or ft."
        )
    L, d = len(blocks(model)), model.config.hidden_size
    seed, reparam = int(cfg.get("init_seed", 0)), cfg.get("reparam")
    like = model.get_input_embeddings().weight
    pt = PrefixTuning(mode, int(cfg.l_p), int(cfg.l_i), L, d, like, reparam, int(cfg.get("mid_dim", 512)), seed)
    model.prefix_tuning = pt
    mark_trainable(model, lambda name: name.startswith("prefix_tuning."))
    init = cfg.get("init", "real_tokens")
    if init not in ("real_tokens", "random"):
        raise CellMismatch(f"method.init={init!r}; allowed: real_tokens, random")
    if pt.reparametrized:  # the MLP goes when training ends (module docstring)
        model.repro_callbacks = [DropReparametrization(pt)]
    if like.device.type != "meta" and init == "real_tokens":
        pt.init_from_real_tokens(model, seed=seed)
    elif like.device.type != "meta":
        pt.init_random(seed)
    model.register_forward_pre_hook(partial(_expand_inputs, pt), with_kwargs=True)
    if mode == "layer":
        for i, block in enumerate(blocks(model)):
            block.register_forward_pre_hook(partial(_replace_activations, pt, i), with_kwargs=True)
    return model
