"""From a composed config to one grid cell: check that model, method and task fit the table and each other, and
apply the table's hyperparameters for this cell.

Precedence, lowest to highest: conf/config.yaml < model/method/task options < the table's `common` block < its
`per_task` block < the table row's `set` < the row's per-task settings < the command line. The command line always wins, so
`train.max_steps=20` shortens any cell of any table.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from repro.errors import CellMismatch

GROUPS = ("model", "method", "task", "table", "paths", "local", "hydra")


def cli_value_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """The `key=value` overrides of a command line (not group choices like model=..., +table=...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key.split("/")[0] in GROUPS and "." not in key or key.startswith("hydra") or o.is_delete():
            continue
        out.append((key, o.value()))
    return out


_REQUIRED = object()


def find_row(table: DictConfig, model: str, method: str, variant: str, default=_REQUIRED):
    """The table's row for (model, method, variant); `default` if given and there is none, else CellMismatch."""
    for row in table.rows:
        if row.model == model and row.method == method and row.get("variant", "default") == variant:
            return row
    if default is not _REQUIRED:
        return default
    rows = ", ".join(
        f"{r.model}/{r.method}" + (f"(variant={r.variant})" if r.get("variant", "default") != "default" else "")
        for r in table.rows
    )
    raise CellMismatch(f"model={model} method={method} variant={variant} is not a row of table {table.name}; its rows: {rows}")


def check_kinds(cfg: DictConfig) -> None:
    wants = "encoder" if cfg.task.kind == "classification" else "decoder"
    if cfg.model.kind != wants:
        raise CellMismatch(
            f"task={cfg.task.name} is a {cfg.task.kind} task and needs an {wants} model; model={cfg.model.name} is a "
            f"{cfg.model.kind} (encoders: roberta-*, deberta-*, minilm, tiny-roberta, tiny-deberta; decoders: gpt2-*, "
            "smollm2-135m, tiny-gpt2, tiny-llama)"
        )


def check_method_fits_model(cfg: DictConfig) -> None:
    """Refusals that the model config alone decides, before any table lookup or download: BitFit on a model whose
    config declares no biases (Llama/SmolLM2). The method surgery refuses it too (repro.methods.finetune), with
    the same words, for a model built outside the runner."""
    arch = cfg.model.get("arch") or {}
    if cfg.method.name == "bitfit" and cfg.model.get("model_type") == "llama" and \
            arch.get("attention_bias", False) is False and arch.get("mlp_bias", False) is False:
        raise CellMismatch(f"method=bitfit: model {cfg.model.name} has no bias parameters (Llama: attention_bias=False, "
                           "mlp_bias=False); BitFit trains biases only")


def resolve_cell(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The cell's full config: table settings merged in, then the command line applied again on top."""
    check_kinds(cfg)
    check_method_fits_model(cfg)
    table = cfg.table
    if table.name == "adhoc":
        layers = []
    else:
        if cfg.task.name not in table.tasks:
            raise CellMismatch(f"task={cfg.task.name} is not in table {table.name}; its tasks: {', '.join(table.tasks)}")
        stand_ins = table.get("stand_ins") or {}
        paper_model = stand_ins.get(cfg.model.name, cfg.model.name)
        if paper_model != cfg.model.name and cfg.variant == "default":
            # a stand-in runs any method; with no such paper row, the method's own conf/method/<name>.yaml
            row = find_row(table, paper_model, cfg.method.name, "default", default={})
        else:
            row = find_row(table, paper_model, cfg.method.name, cfg.variant)
        set_ = row.get("set") or {}
        if paper_model == cfg.model.name:
            per_task = (table.get("per_task") or {}).get(cfg.task.name) or {}
            layers = [table.get("common") or {}, per_task, set_, (row.get("tasks") or {}).get(cfg.task.name) or {}]
        else:  # a small model standing in for a paper model: the row's method settings, the table's stand-in training
            stand_in = table.get("stand_in") or {}
            layers = [{"method": set_.get("method") or {}}, stand_in.get("common") or {},
                      (stand_in.get("methods") or {}).get(cfg.method.name) or {}]
    if "config_overrides" in cfg.model:   # open: tables set per-task model settings (DeBERTa's cls_dropout, Table 10)
        OmegaConf.set_struct(cfg.model.config_overrides, False)
    if "decode" in cfg:   # open for the optional keys (OPTIONAL_DECODE_KEYS), checked by `validate`
        OmegaConf.set_struct(cfg.decode, False)
    cfg = OmegaConf.merge(cfg, *layers)
    with open_dict(cfg):
        for key, value in cli_value_overrides(overrides):
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        cfg.cli_overrides = list(overrides)
    validate(cfg)
    return cfg


# decode keys a table or the command line may add to a task's `decode:` (absent = the default; not written into the
# task configs, so that the cells recorded before them keep their fingerprints)
OPTIONAL_DECODE_KEYS = {"pad_batches": bool}   # left-pad prompts of different lengths into full batches (repro.decode)
DECODE_KEYS = {"num_beams", "length_penalty", "no_repeat_ngram_size", "eos_token_ids", "max_new_tokens", "batch_size",
               "checkpoint", "max_inputs", "split", "early_stop", *OPTIONAL_DECODE_KEYS}


def validate(cfg: DictConfig) -> None:
    if "decode" in cfg:
        unknown = sorted(set(cfg.decode) - DECODE_KEYS)
        if unknown:
            raise CellMismatch(f"decode.{unknown[0]}: not a decode setting; allowed: {', '.join(sorted(DECODE_KEYS))}")
        for key, typ in OPTIONAL_DECODE_KEYS.items():
            if key in cfg.decode and not isinstance(cfg.decode[key], typ):
                raise CellMismatch(f"decode.{key}={cfg.decode[key]!r}: must be a {typ.__name__}")
        OmegaConf.set_struct(cfg.decode, True)
    m = cfg.method
    if "r" in m and m.r is not None and m.r <= 0:
        raise CellMismatch(f"method.r={m.r}: the rank must be a positive integer")
    if cfg.train.global_batch_size <= 0:
        raise CellMismatch(f"train.global_batch_size={cfg.train.global_batch_size} must be positive")
    if cfg.train.select not in ("best", "last"):
        raise CellMismatch(f"train.select={cfg.train.select!r}; allowed: best, last")
