"""One schema for a cell's configuration: every field of every config group, with its type and its range or set of
allowed values, and the rules that tie groups together (a rank the matrices can take, targets the model has, a
method the architecture supports, a task that fits the table and the model).

`check_cell(container)` runs on the resolved cell (repro.cell.resolve_cell), before anything is loaded, trained or
written; a bad value raises ConfigError with one line, `<dotted.field>=<value>: <what is allowed>`.

Adding a config key is one line here: a field in its group's model (`extra="forbid"` rejects any key not declared,
so a misspelt key is an error that lists the allowed ones). tests/test_schema.py derives its cases from these models,
so a new field is tested without a new test.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from repro.errors import ReproError
from repro.method_traits import DECODER_ONLY
from repro.tasks import traits


class ConfigError(ReproError):
    """A config value outside its type or range, an unknown key, or groups that do not fit each other."""


def bad(field: str, value: Any, why: str) -> PydanticCustomError:
    """A cross-field error naming one field (relative to the model whose validator raises it)."""
    return PydanticCustomError("cell_rule", "{why}", {"field": field, "value": value, "why": why})


class Group(BaseModel):
    # strict: no silent coercion (a float seed, "1" for a number, 1 for a bool); a float field still takes an int.
    # allow_inf_nan=False: a float field takes finite numbers only (inf, -inf and nan are refused, `must be a finite
    # number`); a field that means to take them would say Field(allow_inf_nan=True) -- none does.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]
Partial = dict[str, Any]  # a partial cell config inside a table (merged into the cell, so checked there)


# ---------------------------------------------------------------- model
class ArchConfig(Group):
    """`model.arch`: the transformers config keys of the architecture (encoders: BERT/RoBERTa/DeBERTa names;
    GPT-2: n_* names). Which ones are required depends on model.model_type (ModelConfig)."""

    # encoders
    num_hidden_layers: PosInt | None = None
    hidden_size: PosInt | None = None
    num_attention_heads: PosInt | None = None
    attention_head_size: PosInt | None = None
    intermediate_size: PosInt | None = None
    max_position_embeddings: PosInt | None = None
    type_vocab_size: NonNegInt | None = None
    layer_norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    # DeBERTa-v2
    relative_attention: bool | None = None
    position_buckets: PosInt | None = None
    max_relative_positions: Annotated[int, Field(ge=-1)] | None = None
    norm_rel_ebd: Literal["layer_norm", "none"] | None = None
    share_att_key: bool | None = None
    pos_att_type: list[Literal["p2c", "c2p"]] | None = None
    position_biased_input: bool | None = None
    conv_kernel_size: NonNegInt | None = None
    conv_act: Literal["gelu", "relu", "tanh"] | None = None
    pooler_hidden_size: PosInt | None = None
    pooler_dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    pooler_hidden_act: Literal["gelu", "relu", "tanh"] | None = None
    # GPT-2
    n_layer: PosInt | None = None
    n_embd: PosInt | None = None
    n_head: PosInt | None = None
    n_inner: PosInt | None = None
    n_positions: PosInt | None = None
    # Llama (SmolLM2): grouped-query attention, RMSNorm, rotary positions, no biases
    num_key_value_heads: PosInt | None = None
    head_dim: PosInt | None = None
    rms_norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None
    rope_theta: Annotated[float, Field(gt=0)] | None = None
    attention_bias: bool | None = None
    mlp_bias: bool | None = None
    tie_word_embeddings: bool | None = None
    # all
    vocab_size: PosInt | None = None
    pad_token_id: NonNegInt | None = None
    bos_token_id: NonNegInt | None = None
    eos_token_id: NonNegInt | None = None


ARCH_REQUIRED = {
    "gpt2": ("n_layer", "n_embd", "n_head", "n_positions"),
    "encoder": (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    ),
    "llama": (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
    ),
}
DECODER_TYPES = ("gpt2", "llama")


class ModelConfig(Group):
    name: Name
    source: Literal["hub", "package", "tiny"]
    hub_id: Name | None = None
    package: Name | None = None
    tokenizer_hub_id: Name | None = None
    tokenizer_model: Name | None = Field(
        None, description="tiny models: use this conf/model's tokenizer when available"
    )
    gguf_file: Name | None = Field(None, description="source=package: the GGUF file inside the package")
    package_weights: Literal["q4_1_dequantized"] | None = Field(
        None, description="what the package's weights are (SmolLM2: Q4_1 4-bit, dequantized to fp32 at load)"
    )
    model_type: Literal["roberta", "bert", "deberta-v2", "gpt2", "llama"]
    kind: Literal["encoder", "decoder"]
    arch: ArchConfig
    config_overrides: dict[str, Any] = {}  # set on the transformers config at load (e.g. DeBERTa cls_dropout)
    max_per_device_batch_size: PosInt = Field(
        description="the per-device batch cap sized for the SLURM GPU (repro.plan)"
    )
    gradient_checkpointing: bool = Field(description="activation checkpointing: recompute activations in backward")

    @model_validator(mode="after")
    def _fits(self):
        needed = ARCH_REQUIRED[self.model_type if self.model_type in ARCH_REQUIRED else "encoder"]
        missing = [k for k in needed if getattr(self.arch, k) is None]
        if missing:
            raise bad(
                f"arch.{missing[0]}", None, f"required for model_type={self.model_type} (needs {', '.join(needed)})"
            )
        if (self.kind == "decoder") != (self.model_type in DECODER_TYPES):
            raise bad(
                "kind",
                self.kind,
                f"model_type={self.model_type} is {'a decoder' if self.model_type in DECODER_TYPES else 'an encoder'}",
            )
        for key, value in self.config_overrides.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(f"config_overrides.{key}", value, "must be a finite number")
        if self.source == "hub" and not self.hub_id:
            raise bad("hub_id", self.hub_id, "source=hub needs the hub id")
        if self.source == "package" and not self.package:
            raise bad("package", self.package, "source=package needs the package name")
        if self.source == "tiny" and not (self.tokenizer_hub_id or self.hub_id):
            raise bad(
                "tokenizer_hub_id",
                self.tokenizer_hub_id,
                "source=tiny needs the tokenizer's hub id (or the model's hub_id), for when no local tokenizer is set",
            )
        d, heads = self.d_model, self.arch.n_head or self.arch.num_attention_heads
        if d % heads:
            raise bad(
                "arch.hidden_size" if self.model_type != "gpt2" else "arch.n_embd",
                d,
                f"must be a multiple of the number of attention heads ({heads})",
            )
        return self

    @property
    def d_model(self) -> int:
        return self.arch.n_embd or self.arch.hidden_size

    @property
    def num_layers(self) -> int:
        return self.arch.n_layer or self.arch.num_hidden_layers

    @property
    def d_ffn(self) -> int:
        return self.arch.n_inner or self.arch.intermediate_size or 4 * self.d_model

    @property
    def max_positions(self) -> int:
        return self.arch.n_positions or self.arch.max_position_embeddings


# ---------------------------------------------------------------- method (one model per family, chosen by `name`)
class FullConfig(Group):
    """ft: every parameter; bitfit: the biases (+ the task head)."""

    name: Literal["ft", "bitfit"]


class TopLayersConfig(Group):
    name: Literal["fttop2"]
    top_layers: PosInt = 2


class AdapterConfig(Group):
    name: Literal["adapter_h", "adapter_l", "adapter_p", "adapter_d"]
    r: PosInt = Field(description="the adapter bottleneck")
    sites: Annotated[list[Literal["attn", "mlp"]], Field(min_length=1)]
    activation: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    adapter_layernorm: bool = False
    train_layernorm: bool = False
    drop: NonNegInt = Field(0, description="blocks 0..drop-1 get no adapter")
    robust_drop: bool = False
    init_std: Annotated[float, Field(gt=0)] = 0.01


class PrefixConfig(Group):
    name: Literal["prefix_embed", "prefix_layer"]
    l_p: NonNegInt = Field(description="the prefix length")
    l_i: NonNegInt = Field(description="the infix length")
    init_seed: NonNegInt = 0
    mode: Literal["embed", "layer"] | None = None
    reparam: Literal["mlp"] | None = Field(
        None,
        description="null: the prefix is trained directly; mlp: through Li & Liang's MLP, prefix = MLP(P'), "
        "the MLP dropped after training (repro/methods/prefix.py)",
    )
    mid_dim: PosInt = Field(512, description="the MLP's hidden width (Li & Liang's mid_dim; reparam: mlp only)")
    init: Literal["real_tokens", "random"] = Field(
        "real_tokens", description="the prefix starts as random real tokens' embeddings/activations, or N(0, 1)"
    )

    @model_validator(mode="after")
    def _some_tokens(self):
        if self.l_p + self.l_i < 1:
            raise bad("l_p", self.l_p, "l_p + l_i must be at least 1")
        return self


LORA_TARGETS = ("q", "k", "v", "o", "mlp_in", "mlp_out", "mlp_gate")  # mlp_gate: Llama's gated MLP only
TARGET_LIST = "target_list"  # the union tag of a list of targets (left out of an error's dotted path)


def _targets_tag(v: Any) -> str | None:
    return TARGET_LIST if isinstance(v, list) else "all_linear" if v == "all_linear" else None


# a non-empty list of target names, or "all_linear" (every linear layer of each block: repro.methods.targets)
Targets = Annotated[
    Annotated[Annotated[list[Literal[LORA_TARGETS]], Field(min_length=1)], Tag(TARGET_LIST)]
    | Annotated[Literal["all_linear"], Tag("all_linear")],
    Discriminator(
        _targets_tag,
        custom_error_type="targets",
        custom_error_message=f"a non-empty list of {', '.join(LORA_TARGETS)}, or 'all_linear'",
    ),
]


class LoraConfig(Group):
    """LoRA, h = W0 x + s B A x, and the successors that keep that form: lora_all_linear (targets: all_linear),
    rslora (s = alpha / √r), pissa (A, B from W's top-r SVD), dora (a learned magnitude per row)."""

    name: Literal["lora", "lora_all_linear", "rslora", "pissa", "dora"]
    r: PosInt = Field(description="the rank of B A")
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="dropout on the LoRA path")
    targets: Targets
    init: Literal["kaiming", "gaussian", "pissa"] = "kaiming"
    rslora: bool = Field(False, description="scaling alpha / √r instead of alpha / r")

    @model_validator(mode="after")
    def _variant(self):
        if self.init == "pissa" and self.name not in ("lora", "rslora", "pissa"):
            raise bad(
                "init", self.init, f"pissa is for methods lora, rslora and pissa, not {self.name}; kaiming or gaussian"
            )
        if self.name == "pissa" and self.init != "pissa":
            raise bad("init", self.init, "method pissa needs init: pissa")
        if self.name == "rslora" and not self.rslora:
            raise bad("rslora", self.rslora, "method rslora needs rslora: true")
        return self


class QLoraConfig(LoraConfig):
    """LoRA over a 4-bit base (bitsandbytes): every linear layer of each block quantized, whatever `targets` is."""

    name: Literal["qlora"]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the block absmaxes too")
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="the dtype of the 4-bit layers' matmul"
    )


class AdaLoraConfig(Group):
    """AdaLoRA through PEFT (repro.methods.adalora): ranks pruned from init_r to target_r on average."""

    name: Literal["adalora"]
    init_r: PosInt = Field(description="the starting rank of every adapted matrix")
    target_r: PosInt = Field(description="the average rank after the final allocation, at most init_r")
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="dropout on the LoRA path")
    targets: Targets
    tinit: NonNegInt = Field(description="steps at the full budget before pruning starts")
    tfinal: PosInt = Field(description="steps at the final budget (the final allocation is at total_step - tfinal)")
    deltaT: PosInt = Field(description="re-allocate every deltaT steps")
    beta1: Annotated[float, Field(gt=0, lt=1)] = Field(0.85, description="EMA of the sensitivity")
    beta2: Annotated[float, Field(gt=0, lt=1)] = Field(0.85, description="EMA of its uncertainty")
    orth_reg_weight: Annotated[float, Field(ge=0)] = Field(0.5, description="weight of the orthogonality penalty")
    total_step: PosInt | None = Field(
        None, description="null: the Trainer's max_steps (it is set to them at train begin)"
    )

    @model_validator(mode="after")
    def _budget(self):
        if self.target_r > self.init_r:
            raise bad("target_r", self.target_r, f"at most init_r={self.init_r}")
        return self


METHOD_FAMILIES = (FullConfig, TopLayersConfig, AdapterConfig, PrefixConfig, LoraConfig, QLoraConfig, AdaLoraConfig)
METHOD_TAG = {name: cls.__name__ for cls in METHOD_FAMILIES for name in cls.model_fields["name"].annotation.__args__}


def _method_tag(v: Any) -> str | None:
    name = v.get("name") if isinstance(v, dict) else getattr(v, "name", None)
    return METHOD_TAG.get(name) if isinstance(name, str) else None


MethodConfig = Annotated[
    Union[tuple(Annotated[c, Tag(c.__name__)] for c in METHOD_FAMILIES)],  # noqa: UP007 - a union built from a tuple
    Discriminator(
        _method_tag, custom_error_type="method_name", custom_error_message=f"allowed: {', '.join(METHOD_TAG)}"
    ),
]


# ---------------------------------------------------------------- task (one model per kind)
class SplitConfig(Group):
    local: Name
    hub: Name


class HubDataset(Group):
    path: Name
    name: Name | None = None


class _Task(Group):
    name: Name
    hub: HubDataset
    splits: dict[str, SplitConfig]
    metrics: Annotated[list[Name], Field(min_length=1)]
    main_metric: Name

    @model_validator(mode="after")
    def _consistent(self):
        if self.main_metric not in self.metrics:
            raise bad("main_metric", self.main_metric, f"one of task.metrics: {', '.join(self.metrics)}")
        for split in ("train", "dev"):
            if split not in self.splits:
                raise bad("splits", sorted(self.splits), f"needs a {split} split")
        return self


class ClassificationTask(_Task):
    kind: Literal["classification"]
    glue_dir: Name
    header: bool
    columns: dict[str, Name | NonNegInt]
    text_fields: Annotated[list[Name], Field(min_length=1, max_length=2)]
    label_names: list[Name] | None
    num_labels: PosInt

    @model_validator(mode="after")
    def _labels(self):
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise bad("label_names", self.label_names, f"one name per label (num_labels={self.num_labels})")
        missing = [f for f in (*self.text_fields, "label") if f not in self.columns]
        if missing:
            raise bad("columns", self.columns, f"needs a column for {', '.join(missing)}")
        return self


class Postprocess(Group):
    tokenize: bool
    lower: bool


class GenerationTask(_Task):
    kind: Literal["generation"]
    data_subdir: Name
    postprocess: Postprocess


TaskConfig = Annotated[
    Annotated[ClassificationTask, Tag("classification")] | Annotated[GenerationTask, Tag("generation")],
    Discriminator(
        lambda v: v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None),
        custom_error_type="task_kind",
        custom_error_message="allowed: classification, generation",
    ),
]


# ---------------------------------------------------------------- table
class StandIn(Group):
    common: Partial = {}
    methods: dict[str, Partial] = {}


class TableRow(Group):
    model: Name
    method: Name
    variant: Name = "default"
    label: str | None = None
    cited: bool = False
    sources: dict[str, Any] = {}
    set: Partial = {}
    tasks: dict[str, Partial] = {}
    paper_row: dict[str, Any] | None = None
    paper_cell: dict[str, Any] | None = None
    seeds: list[NonNegInt] | None = Field(None, description="the row runs only these of the table's seeds (repro.plan)")
    tune: str | None = Field(
        None,
        description="tune group: rows with the same model, method and tune name are "
        "candidates; one is chosen per task on the selection seed (repro.tune)",
    )


class TableTune(Group):
    seed: NonNegInt = Field(
        0, description="the selection seed: every candidate runs it; the chosen one runs the others"
    )
    metric: Name | None = Field(
        None, description="the record metric candidates are compared on (default: the task's main metric, x100)"
    )
    goal: Literal["max", "min"] = Field("max", description="max: the highest metric wins; min: the lowest (a loss)")


class RenderColumn(Group):
    name: Name = Field(description="the column as the paper prints it (BLEU, MET, BLEU-U, ...)")
    metric: Name = Field(description="the record's metric key (BLEU, METEOR, BLEU_unseen, ...)")
    scale: Literal[1, 100] = Field(100, description="the paper prints metric x scale (E2E: BLEU x100, NIST x1)")
    paper: Name | None = Field(
        None,
        description="the paper file's column: BLEU (a list of columns) or BLEU.U "
        "(columns per metric, Table 14); none: no paper number",
    )


class PrecisionCheck(Group):
    """A check row re-runs one seed of a row in another precision (e2e_cpu: LoRA seed 0 in fp32 beside the bf16
    rows); the row's precision stands when, per column, |check - row| on that seed is no larger than the row's own
    seed-to-seed difference, on every `must_hold` column and on at least `at_least` columns."""

    method: Name = Field(description="the method whose default row and check row are compared")
    variant: Name = Field(description="the check row's variant (e.g. fp32)")
    seeds: Annotated[list[NonNegInt], Field(min_length=2, max_length=2)] = Field(
        [0, 1], description="[the seed both rows ran, the row's second seed (the noise)]"
    )
    must_hold: list[Name] = Field([], description="columns on which the rule must hold (e.g. [BLEU])")
    at_least: PosInt = Field(description="columns on which it must hold, in all")


class ConvergenceCheck(Group):
    """A cell has stopped improving when its dev loss fell by less than `below` (relative) over the last `last` of its
    training steps (repro.results.convergence)."""

    last: Annotated[float, Field(gt=0, lt=1)] = Field(0.2, description="the last part of training, as a fraction")
    below: Annotated[float, Field(gt=0, lt=1)] = Field(0.01, description="the relative dev-loss improvement it allows")


class TableRender(Group):
    cost: bool = Field(False, description="repro.tables adds a Cost section: peak memory, s/step, min/cell per row")
    precision_check: PrecisionCheck | None = Field(None, description="repro.tables adds a Precision check section")
    convergence: ConvergenceCheck | None = Field(
        None, description="repro.tables adds a Convergence section: each record's dev-loss curve and its verdict"
    )
    columns: list[RenderColumn] = Field(
        [],
        description="one task's metrics as the columns (the NLG tables), "
        "instead of one column per task (its main metric x 100)",
    )


class TableConfig(Group):
    name: Name
    paper: Name | None = None
    paper_model: Name | None = None
    paper_ref: Name | None = None
    tasks: list[Name] = []
    seeds: list[NonNegInt] = []
    stand_ins: dict[str, Name] = {}
    stand_in: StandIn = StandIn()
    common: Partial = {}
    per_task: dict[str, Partial] = {}
    rows: list[TableRow] = []
    render: TableRender = TableRender()  # how repro.tables prints the table (not part of a cell's fingerprint)
    tune: TableTune = TableTune()

    @model_validator(mode="after")
    def _grid(self):
        if self.name != "adhoc" and not (self.tasks and self.rows):
            raise bad("tasks" if not self.tasks else "rows", [], f"table {self.name} needs tasks and rows")
        check = self.render.precision_check
        if check:
            names = [c.name for c in self.render.columns] or list(self.tasks)
            if unknown := [m for m in check.must_hold if m not in names]:
                raise bad("render.precision_check.must_hold", unknown, f"not columns of table {self.name}: {names}")
            if check.at_least > len(names):
                raise bad(
                    "render.precision_check.at_least", check.at_least, f"table {self.name} has {len(names)} columns"
                )
            variants = {(r.method, r.variant) for r in self.rows}
            if {(check.method, "default"), (check.method, check.variant)} - variants:
                raise bad(
                    "render.precision_check",
                    f"{check.method}.{check.variant}",
                    f"needs rows {check.method} (default) and {check.method} variant {check.variant}; rows: "
                    f"{sorted(f'{m}.{v}' for m, v in variants)}",
                )
        if self.render.columns and len(self.tasks) != 1:
            raise bad(
                "render.columns",
                [c.name for c in self.render.columns],
                f"metric columns are one task's; table {self.name} has tasks {self.tasks}",
            )
        groups: dict[tuple, list[TableRow]] = {}
        for row in self.rows:
            if row.tune:
                groups.setdefault((row.model, row.method, row.tune), []).append(row)
        for (model, method, name), rows in groups.items():
            if len(rows) < 2 or len({r.variant for r in rows}) < len(rows):
                raise bad(
                    "rows.tune",
                    name,
                    f"tune group {name!r} ({model} x {method}) needs at least two candidate "
                    f"rows with distinct variants; it has {[r.variant for r in rows]}",
                )
            if any(r.seeds is not None and self.tune.seed not in r.seeds for r in rows):
                raise bad(
                    "rows.seeds",
                    name,
                    f"every candidate of tune group {name!r} must run the selection seed tune.seed={self.tune.seed}",
                )
        if groups and self.seeds and self.tune.seed not in self.seeds:
            raise bad(
                "tune.seed",
                self.tune.seed,
                f"tune.seed={self.tune.seed}: the selection seed must be one of the table's seeds {self.seeds}",
            )
        return self


# ---------------------------------------------------------------- train, data, decode, paths, wandb
class TrainConfig(Group):
    learning_rate: Annotated[float, Field(gt=0, le=1)] = Field(
        description="AdamW's peak step size; above 1 it is no learning rate (the paper's: 2e-5 to 2e-3)"
    )
    num_train_epochs: Annotated[float, Field(gt=0, le=1000)] = Field(
        description="passes over the training set (the paper's longest schedule: 80 epochs)"
    )
    max_steps: Annotated[int, Field(ge=-1)] = Field(description="-1: num_train_epochs decides; > 0 overrides epochs")
    global_batch_size: PosInt = Field(description="the batch the optimizer sees")
    max_per_device_batch_size: PosInt
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_ratio: Annotated[float, Field(ge=0, le=1)]
    warmup_steps: NonNegInt
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ]
    max_grad_norm: Annotated[float, Field(ge=0)] = Field(description="0: no clipping")
    adam_beta1: Annotated[float, Field(ge=0, lt=1)]
    adam_beta2: Annotated[float, Field(ge=0, lt=1)]
    adam_epsilon: Annotated[float, Field(gt=0, lt=1)] = Field(description="added to Adam's denominator (1e-8, 1e-6)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)]
    precision: Literal["fp32", "fp16", "bf16"]
    eval_strategy: Literal["epoch", "steps"]
    eval_steps: PosInt | None
    logging_steps: PosInt
    group_by_length: bool
    fast_path: bool = Field(
        False, description="the CPU training engine of issue 27 (repro.precision); false: as committed records ran"
    )
    select: Literal["best", "last"]
    keep_checkpoints: bool
    save_every_steps: PosInt | None = Field(description="a checkpoint every N optimizer steps (null: by time only)")
    save_every_minutes: Annotated[float, Field(gt=0)] | None = Field(
        description="a checkpoint every M minutes of training (null: off)"
    )
    init_from: Name | None
    allow_smoke_init: bool = Field(description="accept an init_from checkpoint written by a smoke run")
    divergence_patience: PosInt = Field(description="consecutive non-finite steps before a cell is called diverged")

    @model_validator(mode="after")
    def _steps(self):
        if self.max_steps == 0:
            raise bad("max_steps", 0, "-1 (num_train_epochs decides) or a positive number of steps")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise bad("eval_steps", None, "a positive number of steps when train.eval_strategy=steps")
        return self


class DataConfig(Group):
    max_seq_length: PosInt
    max_train_samples: PosInt | None = Field(description="null: the whole training set")
    max_eval_samples: PosInt | None = Field(description="null: the whole dev set")


class DecodeConfig(Group):
    """Beam search for the NLG tasks (conf/task/{e2e,webnlg,dart}.yaml set it)."""

    num_beams: PosInt = Field(description="the beam size")
    length_penalty: Annotated[float, Field(ge=-5, le=5)] = Field(
        description="beam scores are log p / length^length_penalty: 0 plain log p, 1 per token (the paper's 0.8-0.9)"
    )
    no_repeat_ngram_size: NonNegInt = Field(description="0: off")
    eos_token_ids: Annotated[list[NonNegInt], Field(min_length=1)]
    max_new_tokens: PosInt
    batch_size: PosInt
    checkpoint: Literal["last", "best"]
    max_inputs: PosInt | None = Field(description="null: every test input")
    split: Name
    early_stop: bool = True
    pad_batches: bool | None = Field(
        None,
        description="left-pad prompts of different lengths into full batches; "
        "absent/false: equal-length groups (repro.decode)",
    )


class PathsConfig(Group):
    data_dir: Name | None
    results_dir: Name
    log_dir: Name


class WandbConfig(Group):
    enabled: bool
    mode: Literal["offline", "online", "disabled"]
    project: Name
    entity: Name | None
    group: Name | None = Field(None, description="null: the cell, table/model/method[.variant]/task")
    tags: list[Name] = []
    notes: str | None = None
    log_weights: bool = Field(True, description="the trained tensors as an artifact")


class DebugConfig(Group):
    """A debug preset (conf/debug/<name>.yaml, e.g. debug=smoke): its settings go over the table's (repro/cell.py)."""

    name: Name
    set: dict[str, Any] = Field(description="settings over the table's, under the command line")


# ---------------------------------------------------------------- the cell
class CellConfig(Group):
    paths: PathsConfig
    model: ModelConfig
    method: MethodConfig
    task: TaskConfig
    table: TableConfig
    variant: Name = Field(description="the table row, when one (model, method) has several")
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    force: bool
    dry_run: bool
    allow_cpu: bool = Field(description="train a paper model's cell of a paper table without a GPU")
    threads: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="CPU threads of this cell (null: torch's default)"
    )
    data: DataConfig
    train: TrainConfig
    wandb: WandbConfig
    debug: DebugConfig | None = None
    decode: DecodeConfig | None = None
    cli_overrides: list[str] = []
    local: dict[str, Any] | None = None  # conf/local/ (untracked, machine-specific) when it is its own package

    @model_validator(mode="after")
    def _cell(self):
        model, method, task, table = self.model, self.method, self.task, self.table
        # the task's family decides the model's kind
        wants = traits(task.kind).model_kind
        if model.kind != wants:
            raise bad(
                "model.kind",
                model.kind,
                f"task={task.name} is a {task.kind} task and needs {'an' if wants == 'encoder' else 'a'} {wants} model; "
                f"model={model.name} is {'an' if model.kind == 'encoder' else 'a'} {model.kind} (encoders: roberta-*, deberta-*, minilm, tiny-roberta, tiny-deberta; decoders: gpt2-*, smollm2-135m, tiny-gpt2, tiny-llama)",
            )
        if table.name != "adhoc" and task.name not in table.tasks:
            raise bad("task.name", task.name, f"not in table {table.name}; its tasks: {', '.join(table.tasks)}")
        # decoding settings exist exactly for the tasks whose family decodes text
        if traits(task.kind).decodes:
            if self.decode is None:
                raise bad("decode", None, f"task={task.name} is a {task.kind} task and needs decode settings")
            if self.decode.split not in task.splits:
                raise bad("decode.split", self.decode.split, f"a split of task {task.name}: {', '.join(task.splits)}")
            if self.decode.max_new_tokens >= self.data.max_seq_length:
                raise bad(
                    "decode.max_new_tokens",
                    self.decode.max_new_tokens,
                    f"less than data.max_seq_length={self.data.max_seq_length} (the prompt gets the rest)",
                )
        if self.data.max_seq_length > model.max_positions:
            raise bad(
                "data.max_seq_length",
                self.data.max_seq_length,
                f"at most {model.max_positions}, the positions model={model.name} has",
            )
        # the method must fit the architecture
        L = model.num_layers
        if method.name in DECODER_ONLY and model.model_type not in DECODER_TYPES:
            raise bad(
                "method.name",
                method.name,
                f"prefix tuning is implemented for decoders (GPT-2, Llama), model={model.name} is a {model.model_type} "
                f"{model.kind}; for encoders use lora, adapter_*, bitfit or ft",
            )
        if isinstance(method, (LoraConfig, AdaLoraConfig)):
            from repro.methods.targets import BLOCK_MODULES, FUSED_QKV, target_names

            has = BLOCK_MODULES.get(model.model_type, {})
            targets = target_names(model.model_type, method.targets)  # "all_linear": every linear layer of a block
            unknown = [t for t in targets if t not in has]
            if unknown:
                raise bad("method.targets", method.targets, f"{model.model_type} has {', '.join(has)}")
            d_kv = (
                (model.arch.num_key_value_heads or 0)
                * (model.arch.head_dim or model.d_model // model.arch.num_attention_heads)
                if model.arch.num_key_value_heads
                else model.d_model
            )  # Llama GQA: W_k, W_v are d -> d_kv
            sizes = {
                t: (model.d_model, model.d_ffn)
                if t.startswith("mlp")
                else (model.d_model, d_kv if t in ("k", "v") else model.d_model)
                for t in targets
            }
            cap = min(min(s) for s in sizes.values())
            rank = ("r", method.r) if isinstance(method, LoraConfig) else ("init_r", method.init_r)
            if rank[1] > cap:
                raise bad(
                    f"method.{rank[0]}",
                    rank[1],
                    f"the rank must be at most {cap}, min(fan_in, fan_out) of the targeted "
                    f"matrices of model={model.name} ({', '.join(f'{t}: {a}x{b}' for t, (a, b) in sizes.items())})",
                )
            fused = FUSED_QKV.get(model.model_type)
            if (
                isinstance(method, AdaLoraConfig)
                and fused
                and {*fused[1]} & {*targets}
                and not {*fused[1]} <= {*targets}
            ):
                raise bad(
                    "method.targets",
                    method.targets,
                    f"{model.model_type}'s q, k, v are one fused matrix "
                    f"({fused[0]}): AdaLoRA targets all three or none",
                )
        if isinstance(method, QLoraConfig):
            from repro.methods.qlora import BLOCK

            if model.model_type == "gpt2":
                raise bad(
                    "method.name",
                    method.name,
                    "GPT-2's Conv1D layers are not converted to 4 bits; qlora needs "
                    "a model of nn.Linear layers (an encoder)",
                )
            if model.d_model % BLOCK or model.d_ffn % BLOCK:
                raise bad(
                    "method.name",
                    method.name,
                    f"every block matrix is quantized in blocks of {BLOCK} inputs: "
                    f"d_model={model.d_model} and d_ffn={model.d_ffn} of model={model.name} must be multiples of {BLOCK}",
                )
        if isinstance(method, AdapterConfig) and method.drop >= L:
            raise bad("method.drop", method.drop, f"in 0..{L - 1} (model={model.name} has {L} blocks)")
        if isinstance(method, TopLayersConfig) and method.top_layers > L:
            raise bad("method.top_layers", method.top_layers, f"in 1..{L} (model={model.name} has {L} blocks)")
        return self


# ---------------------------------------------------------------- errors as one line
TASK_FAMILIES = {"classification": ClassificationTask, "generation": GenerationTask}
FAMILIES = {**{cls.__name__: cls for cls in METHOD_FAMILIES}, **TASK_FAMILIES}  # union tags -> member models
UNION_TAGS = {
    *FAMILIES,
    TARGET_LIST,
}  # what pydantic puts in an error's location to say which member of a union it checked


def _field_path(loc: tuple) -> list[str]:
    """The dotted path of a pydantic error location, without the union tags pydantic puts in it."""
    return [str(p) for p in loc if p not in UNION_TAGS]


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The schema models an annotation holds (X, X | None, a union of families, list[X], dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in models_in(arg)]


def _walk(loc: list) -> tuple[Any, Any]:
    """(the schema model at `loc`, the FieldInfo of its last part); a union tag in `loc` picks the member."""
    cls: Any = CellConfig
    info = None
    for part in loc:
        if part in UNION_TAGS:
            cls = FAMILIES.get(part, cls)
            continue
        fields = getattr(cls, "model_fields", None)
        if isinstance(part, int) or str(part).isdigit():
            continue  # an item of a list of models: the same model
        if not fields or part not in fields:
            return None, None
        info = fields[part]
        members = models_in(info.annotation)
        cls = members[0] if len(members) == 1 else None if members else info.annotation
    return cls, info


def allowed_keys(loc: list) -> list[str]:
    """The declared keys of the group at `loc` (for an unknown key); [] where that depends on a union's member."""
    cls, _ = _walk(loc)
    return list(getattr(cls, "model_fields", {}) or {})


def describe(err: dict) -> str:
    """One pydantic error as `<dotted.field>=<value>: <what is allowed>`."""
    path = _field_path(err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "cell_rule":
        return f"{'.'.join([*path, ctx['field']])}={ctx['value']!r}: {ctx['why']}"
    if kind in ("method_name", "task_kind"):  # the discriminator of a union of groups
        key = "name" if kind == "method_name" else "kind"
        if isinstance(value, dict):
            return f"{'.'.join([*path, key])}={value.get(key)!r}: {err['msg']}"
        return f"{'.'.join(path)}={value!r}: must be a mapping whose {key} is {err['msg'].removeprefix('allowed: ')}"
    dotted = ".".join(path)
    if kind == "extra_forbidden":
        allowed = allowed_keys(list(err["loc"][:-1]))
        return f"{dotted}={value!r}: unknown key" + (
            f"; allowed keys of {'.'.join(path[:-1]) or 'the config'}: {', '.join(allowed)}" if allowed else ""
        )
    if kind == "missing":
        return f"{dotted}: missing (required)"
    msg = err["msg"].replace("Input should be", "must be").replace("Input", "the value")
    _, info = _walk(list(err["loc"]))
    note = f" ({info.description})" if info is not None and info.description else ""
    return f"{dotted}={value!r}: {msg}{note}"


def one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return describe(errors[0]).replace("\n", " ") + more


def check_cell(container: dict) -> CellConfig:
    """The cell's resolved config (a plain dict) against the schema; ConfigError (one line) when it does not fit."""
    try:
        return CellConfig.model_validate(container)
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None
