"""From a composed config to one grid cell: check that model, method and task fit the table and each other, and
apply the table's hyperparameters for this cell.

Precedence, lowest to highest: conf/config.yaml < model/method/task options < the table's `common` block < its
`per_task` block < the table row's `set` < the row's per-task settings < a debug preset's `set` (debug=smoke) < the
command line. The command line always wins, so `train.max_steps=20` shortens any cell of any table.

A smoke run (a debug preset, or a command line that shortens training: `smoke_reason`) never writes into the committed
results tree (`check_scratch`).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from repro import PROJECT_ROOT, paths, schema
from repro.errors import CellMismatch
from repro.schema import ConfigError

GROUPS = ("model", "method", "task", "table", "paths", "local", "debug", "hydra")


def cli_value_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """The `key=value` overrides of a command line (not group choices like model=..., +table=...)."""
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key.split("/")[0] in GROUPS and "." not in key or key.startswith("hydra") or o.is_delete():
            continue
        out.append((key, o.value()))
    return out


def smoke_reason(cfg: DictConfig) -> str | None:
    """Why a cell is a smoke run, else None. A smoke run is one under a debug preset (debug=smoke), or one whose command
    line shortens the training its config and table define: it sets `train.max_steps` > 0 or a
    `data.max_train_samples` (a table's own subsample or step count, e.g. glue_cpu's, is the cell's schedule, not
    smoke). Stored with its weights (the checkpoint's `smoke`), so that a table cell never starts from a smoke run's
    weights (train.init_from)."""
    if cfg.get("debug"):
        return f"debug={cfg.debug.name}"
    for key, value in cli_value_overrides(list(cfg.get("cli_overrides") or [])):
        if (key == "train.max_steps" and value is not None and int(value) > 0) or (
            key == "data.max_train_samples" and value is not None
        ):
            return f"{key}={value} on the command line"
    return None


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
    raise CellMismatch(
        f"model={model} method={method} variant={variant} is not a row of table {table.name}; its rows: {rows}"
    )


def check_method_fits_model(cfg: DictConfig) -> None:
    """Refusals that the model config alone decides, before any table lookup or download: BitFit on a model whose
    config declares no biases (Llama/SmolLM2). The method surgery refuses it too (repro.methods.finetune), with
    the same words, for a model built outside the runner."""
    arch = cfg.model.get("arch") or {}
    if (
        cfg.method.name == "bitfit"
        and cfg.model.get("model_type") == "llama"
        and arch.get("attention_bias", False) is False
        and arch.get("mlp_bias", False) is False
    ):
        raise CellMismatch(
            f"method=bitfit: model {cfg.model.name} has no bias parameters (Llama: attention_bias=False, "
            "mlp_bias=False); BitFit trains biases only"
        )


def resolve_cell(cfg: DictConfig, overrides: list[str], check: bool = True) -> DictConfig:
    """The cell's full config: table settings merged in, then the command line applied again on top, then checked
    against the schema (repro.schema; `check=False` only for the planner's estimates of cells that cannot run).
    Any bad value raises a ReproError with one line; nothing has been loaded or written yet."""
    check_method_fits_model(cfg)
    try:
        resolved = _resolve(cfg, overrides)
    except OmegaConfBaseException as exc:  # e.g. a table layer with a key the config does not have
        raise ConfigError(one_line_omegaconf(exc)) from None
    except CellMismatch:  # not a row of the table: when the groups themselves do not fit (a decoder for GLUE), say that
        if check:
            check_cell(cfg, table_rules=False)
        raise
    cfg = resolved
    if check:
        check_cell(cfg)
        check_scratch(cfg)
    return cfg


def check_paths(cfg: DictConfig) -> None:
    """The paths a cell is given, usable before anything is loaded, locked or written (repro.paths): the results and
    log folders exist or can be created, and can be written; the data folder (when set) exists; train.init_from (when
    set) is a safetensors file. PathError (one line) otherwise."""
    paths.output_dir(cfg.paths.results_dir, "paths.results_dir")
    paths.output_dir(cfg.paths.log_dir, "paths.log_dir")
    if cfg.paths.get("data_dir"):
        paths.input_dir(cfg.paths.data_dir, "paths.data_dir")
    if cfg.train.get("init_from"):
        paths.input_file(
            cfg.train.init_from,
            "train.init_from",
            kind="safetensors",
            hint="run the cell that writes it first (the MNLI cell of the same model, method and seed)",
        )


COMMITTED_RESULTS = PROJECT_ROOT / "results"


def check_scratch(cfg: DictConfig) -> None:
    """A smoke run writes nowhere inside the repository's results/ (the committed records, which tables and claims
    read): ConfigError naming the folder and where to write instead."""
    why = smoke_reason(cfg)
    results = Path(str(cfg.paths.results_dir)).resolve()
    committed = COMMITTED_RESULTS.resolve()
    if why is not None and (results == committed or committed in results.parents):
        raise ConfigError(
            f"paths.results_dir={cfg.paths.results_dir}: a smoke run ({why}) never writes into the committed results "
            f"tree {committed}: run it with debug=smoke (records under .smoke/), or set paths.results_dir (or "
            "REPRO_RESULTS_DIR) to a folder outside it"
        )


def check_cell(cfg: DictConfig | dict, table_rules: bool = True) -> None:
    """The resolved cell (or its plain-dict form) against the schema: ConfigError `<field>=<value>: <what is allowed>`
    if it does not fit. `table_rules=False`: the groups only, as composed before the table's settings (the table is
    then read as adhoc)."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve (${oc.env:...}, ${nope})
        raise ConfigError(one_line_omegaconf(exc)) from None
    container.pop("hydra", None)
    if not table_rules:
        container["table"] = {"name": "adhoc"}
    schema.check_cell(container)


def one_line_omegaconf(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines)


def _resolve(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    table = cfg.table
    if table.name == "adhoc":
        layers = []
    else:
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
            layers = [
                {"method": set_.get("method") or {}},
                stand_in.get("common") or {},
                (stand_in.get("methods") or {}).get(cfg.method.name) or {},
            ]
    if "config_overrides" in cfg.model:  # open: tables set per-task model settings (DeBERTa's cls_dropout, Table 10)
        OmegaConf.set_struct(cfg.model.config_overrides, False)
    if "decode" in cfg:  # open for the optional keys (decode.pad_batches), which the schema checks
        OmegaConf.set_struct(cfg.decode, False)
    if cfg.get("debug"):  # a debug preset's settings: over the table's, under the command line; only the cell's groups
        preset = cfg.debug.get("set") or {}
        layers.append({group: value for group, value in preset.items() if group in cfg})
    cfg = OmegaConf.merge(cfg, *layers)
    with open_dict(cfg):
        for key, value in cli_value_overrides(overrides):
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        cfg.cli_overrides = list(overrides)
    return cfg
