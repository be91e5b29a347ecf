"""The config schema (repro/schema.py), table-driven from the schema itself: for every field of every schema model, a
value of the wrong type and a value out of its range (past each of its bounds, not in the allowed set, an empty list or
name), and for every field that takes a float inf, -inf and nan, are rejected by the check resolve_cell runs, with one
line that names the field. A field added to the schema is tested here without a new test. Then the cross-group rules,
and the runner end to end: exit 2, one line, nothing written."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import pytest
from omegaconf import OmegaConf
from pydantic import BaseModel

from repro import PROJECT_ROOT, schema
from repro.cell import check_cell, resolve_cell
from repro.errors import ReproError
from repro.schema import CellConfig, ConfigError, models_in

from .conftest import compose_cfg

# Real cells in which every schema model occurs at least once (test_every_schema_model_has_a_home keeps this true).
BASE_CELLS = [
    ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte"],
    ["+table=glue", "model=tiny-roberta", "method=adapter_h", "task=rte"],
    ["+table=glue", "model=tiny-roberta", "method=fttop2", "task=rte"],
    ["+table=glue", "model=tiny-roberta", "method=ft", "task=rte", "debug=smoke"],  # debug
    ["+table=e2e", "model=tiny-gpt2", "method=prefix_layer", "task=e2e"],
    [
        "+table=glue",
        "model=tiny-roberta",
        "method=qlora",
        "task=rte",
        "model.arch.hidden_size=64",
        "model.arch.intermediate_size=128",
    ],
    ["+table=glue", "model=tiny-roberta", "method=adalora", "task=rte"],
    ["+table=variants_cpu", "model=minilm", "method=dora", "task=sst2"],  # table.render
    ["+table=glue_cpu_tuned", "model=minilm", "method=lora", "variant=lr1e-3", "task=rte"],  # table.tune
    ["+table=e2e_cpu", "model=smollm2-135m", "method=lora", "variant=fp32", "task=e2e"],  # table.render.precision_check
    ["+table=e2e_cpu_tuned", "model=smollm2-135m", "method=prefix_layer", "variant=lr3e-4", "task=e2e"],  # convergence
]


def all_models(root: type[BaseModel] = CellConfig) -> list[type[BaseModel]]:
    """Every schema model reachable from the cell's (union members, list and dict items included)."""
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for info in cls.model_fields.values():
            todo.extend(models_in(info.annotation))
    return seen


# ---------------------------------------------------------------- values derived from a field's annotation
NONE = type(None)


def _unwrap(annotation: Any, metadata: list) -> tuple[Any, list]:
    """(the type without Optional and Annotated, its constraints); a union of several types stays as it is."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            for m in extra:
                metadata = [*metadata, *getattr(m, "metadata", [m])]
            continue
        if get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not NONE]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, metadata


def wrong_type(annotation: Any) -> Any:
    base, _ = _unwrap(annotation, [])
    if base in (int, float, bool):
        return "not-a-number" if base is not bool else "maybe"
    if base is str or get_origin(base) is Literal:
        return 12345
    if get_origin(base) is list:
        return "not-a-list"
    return 5  # a mapping (a dict field, a group, a union of groups) given a scalar


def out_of_range(annotation: Any, metadata: list) -> list[tuple[str, Any]]:
    """(path suffix, bad value) past each of the field's declared bounds, or outside its set; [] for a field with
    none."""
    base, meta = _unwrap(annotation, list(metadata))
    if get_origin(base) is Literal:
        return [("", "no-such-option")]
    if base in (int, float):
        past = {at.Ge: lambda m: m.ge - 1, at.Gt: lambda m: m.gt, at.Le: lambda m: m.le + 1, at.Lt: lambda m: m.lt}
        return [("", past[type(m)](m)) for m in meta if type(m) in past]
    if base is str:
        return [("", "")] if any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta) else []
    if get_origin(base) is list:
        if any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta):
            return [("", [])]
        if any(isinstance(m, at.MaxLen) for m in meta):
            return [("", ["x"] * (next(m.max_length for m in meta if isinstance(m, at.MaxLen)) + 1))]
        return [(f".0{suffix}", [value]) for suffix, value in out_of_range(get_args(base)[0], [])]
    if get_origin(base) is dict:
        return [(f".k{suffix}", {"k": value}) for suffix, value in out_of_range(get_args(base)[1], [])]
    return []


def non_finite(annotation: Any, metadata: list) -> list[tuple[str, Any]]:
    """(path suffix, value) for inf, -inf and nan where the field takes a float (a list's or a dict's items too),
    unless the field says it takes them (allow_inf_nan=True); [] for a field that takes no float."""
    base, meta = _unwrap(annotation, list(metadata))
    if any(getattr(m, "allow_inf_nan", False) for m in meta):
        return []
    if base is float:
        return [("", v) for v in (math.inf, -math.inf, math.nan)]
    if get_origin(base) is list:
        return [(f".0{suffix}", [value]) for suffix, value in non_finite(get_args(base)[0], [])]
    if get_origin(base) is dict:
        return [(f".k{suffix}", {"k": value}) for suffix, value in non_finite(get_args(base)[1], [])]
    return []


KINDS = {"out_of_range": out_of_range, "non_finite": non_finite}


def cases() -> list:
    out = []
    for cls in all_models():
        for name, info in cls.model_fields.items():
            out.append(pytest.param(cls, name, "wrong_type", 0, id=f"{cls.__name__}.{name}-wrong_type"))
            for kind, derive in KINDS.items():
                for i, (_, value) in enumerate(derive(info.annotation, info.metadata)):
                    out.append(pytest.param(cls, name, kind, i, id=f"{cls.__name__}.{name}-{kind}-{value!r}"))
    return out


def test_every_float_field_has_non_finite_cases():
    """The derivation reaches every float the schema takes (e.g. train.learning_rate, decode.length_penalty)."""
    ids = {p.id for p in cases()}
    for field in ("TrainConfig.learning_rate", "TrainConfig.num_train_epochs", "DecodeConfig.length_penalty"):
        assert {f"{field}-non_finite-{v}" for v in ("inf", "-inf", "nan")} <= ids


# ---------------------------------------------------------------- where each schema model lives in a real cell
def _instances(node: Any, path: list) -> typing.Iterator[tuple[type, list]]:
    if isinstance(node, BaseModel):
        yield type(node), path
        for name in type(node).model_fields:
            yield from _instances(getattr(node, name), [*path, name])
    elif isinstance(node, list) and node:
        yield from _instances(node[0], [*path, 0])
    elif isinstance(node, dict) and node:
        key = next(iter(node))
        yield from _instances(node[key], [*path, key])


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[type, tuple[dict, list]]:
    """schema model -> (a real resolved cell as a plain dict, the path of one instance of the model in it)."""
    out: dict[type, tuple[dict, list]] = {}
    tmp = tmp_path_factory.mktemp("schema")
    for overrides in BASE_CELLS:
        cfg = resolve_cell(compose_cfg(overrides, tmp), overrides)
        container = OmegaConf.to_container(cfg, resolve=True)
        for cls, path in _instances(CellConfig.model_validate(container), []):
            if _present(container, path):  # a default instance (a group the config leaves out) is not a home
                out.setdefault(cls, (container, path))
    return out


def _present(container: dict, path: list) -> bool:
    node = container
    for part in path:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        else:
            return False
    return True


def test_every_schema_model_has_a_home(homes):
    missing = [cls.__name__ for cls in all_models() if cls not in homes]
    assert not missing, f"add a cell to BASE_CELLS in which these occur: {missing}"


def _set(container: dict, path: list, value: Any) -> dict:
    out = copy.deepcopy(container)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("cls,field,kind,i", cases())
def test_every_field_rejects_a_wrong_type_an_out_of_range_and_a_non_finite_value(homes, cls, field, kind, i):
    container, where = homes[cls]
    info = cls.model_fields[field]
    if kind == "wrong_type":
        suffix, value = "", wrong_type(info.annotation)
    else:
        suffix, value = KINDS[kind](info.annotation, info.metadata)[i]
    bad = _set(container, [*where, field], value)
    dotted = ".".join(str(p) for p in [*where, field]) + suffix
    with pytest.raises(ConfigError) as err:
        check_cell(bad)  # what resolve_cell runs on every cell, before anything is loaded
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, ReproError)
    assert msg.startswith(f"{dotted}="), msg  # names the field
    if not suffix and not isinstance(value, (dict, list)):
        assert msg.startswith(f"{dotted}={value!r}: "), msg  # and the value, then what is allowed
    if kind == "non_finite":
        assert "must be a finite number" in msg, msg


def test_an_unknown_key_lists_the_allowed_ones(homes):
    container, _ = homes[schema.TrainConfig]
    with pytest.raises(ConfigError) as err:
        check_cell(_set(container, ["train", "lerning_rate"], 1e-3))
    assert str(err.value).startswith("train.lerning_rate=0.001: unknown key; allowed keys of train: learning_rate,")
    with pytest.raises(ConfigError) as err:
        check_cell(_set(container, ["method", "rank"], 4))
    assert str(err.value).startswith("method.rank=4: unknown key; allowed keys of method: name, r, alpha,")


# ---------------------------------------------------------------- rules across groups, through resolve_cell
@pytest.mark.parametrize(
    "overrides,starts",
    [
        (
            ["model=tiny-gpt2", "method=lora", "task=rte"],
            "model.kind='decoder': task=rte is a classification task and needs an encoder",
        ),
        (["+table=glue", "model=gpt2-medium", "method=lora", "task=rte"], "model.kind='decoder'"),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "method.r=33"],
            "method.r=33: the rank must be at most 32",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=prefix_layer", "task=rte"],
            "method.name='prefix_layer': prefix tuning",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=adapter_h", "task=rte", "method.drop=2"],
            "method.drop=2: in 0..1",
        ),
        (
            ["+table=rank", "model=minilm", "method=lora", "variant=qv_r8", "task=cola"],
            "task.name='cola': not in table rank",
        ),
        (
            ["+table=e2e", "model=tiny-gpt2", "method=lora", "task=e2e", "decode.max_new_tokens=128"],
            "decode.max_new_tokens=128: less than",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "data.max_seq_length=1024"],
            "data.max_seq_length=1024: at most 514",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "train.eval_strategy=steps"],
            "train.eval_steps=None",
        ),
        # the LoRA variants: targets (a list or all_linear) resolved for the model, the ranks they allow, init and scaling rules
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "method.targets=[q,mlp_gate]"],
            "method.targets=['q', 'mlp_gate']: roberta has q, k, v, o, mlp_in, mlp_out",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "method.targets=all_layers"],
            "method.targets='all_layers': a non-empty list of",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora_all_linear", "task=rte", "method.r=33"],
            "method.r=33: the rank must be at most 32",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=rslora", "task=rte", "method.rslora=false"],
            "method.rslora=False: method rslora needs rslora: true",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=pissa", "task=rte", "method.init=kaiming"],
            "method.init='kaiming': method pissa needs init: pissa",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=dora", "task=rte", "method.init=pissa"],
            "method.init='pissa': pissa is for methods lora, rslora and pissa",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "method=qlora", "task=rte"],
            "method.name='qlora': every block matrix is quantized in blocks of 64",
        ),
        (["+table=e2e", "model=tiny-gpt2", "method=qlora", "task=e2e"], "method.name='qlora': GPT-2's Conv1D layers"),
        (
            ["+table=glue", "model=tiny-roberta", "method=adalora", "task=rte", "method.target_r=13"],
            "method.target_r=13: at most init_r=12",
        ),
        (
            [
                "+table=glue",
                "model=tiny-roberta",
                "method=adalora",
                "task=rte",
                "method.init_r=40",
                "method.target_r=8",
            ],
            "method.init_r=40: the rank must be at most 32",
        ),
        (
            ["+table=e2e", "model=tiny-gpt2", "method=adalora", "task=e2e", "method.targets=[q,v]"],
            "method.targets=['q', 'v']: gpt2's q, k, v are one fused matrix",
        ),
        # a float handed to transformers as it is: finite too
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "+model.config_overrides.cls_dropout=inf"],
            "model.config_overrides.cls_dropout=inf: must be a finite number",
        ),
        # a table's precision check names its columns and rows
        (
            [
                "+table=e2e_cpu",
                "model=smollm2-135m",
                "method=lora",
                "task=e2e",
                "table.render.precision_check.must_hold=[BLUE]",
            ],
            "table.render.precision_check.must_hold=['BLUE']: not columns of table e2e_cpu: ['BLEU', 'NIST', 'MET', 'ROUGE-L', 'CIDEr']",
        ),
        (
            [
                "+table=e2e_cpu",
                "model=smollm2-135m",
                "method=lora",
                "task=e2e",
                "table.render.precision_check.at_least=6",
            ],
            "table.render.precision_check.at_least=6: table e2e_cpu has 5 columns",
        ),
        (
            [
                "+table=e2e_cpu",
                "model=smollm2-135m",
                "method=lora",
                "task=e2e",
                "table.render.precision_check.variant=bf16",
            ],
            "table.render.precision_check='lora.bf16': needs rows lora (default) and lora variant bf16; rows: [",
        ),
    ],
)
def test_groups_that_do_not_fit_each_other(compose_config, overrides, starts):
    with pytest.raises(ConfigError) as err:
        resolve_cell(compose_config(overrides), overrides)
    assert str(err.value).startswith(starts), str(err.value)


@pytest.mark.parametrize(
    "targets,starts",
    [
        ("[q,x]", "method.targets.1='x': must be 'q', 'k', 'v', 'o', 'mlp_in', 'mlp_out' or 'mlp_gate'"),
        ("[]", "method.targets=[]: List should have at least 1 item"),
        ("7", "method.targets=7: a non-empty list of q, k, v, o, mlp_in, mlp_out, mlp_gate, or 'all_linear'"),
    ],
)
def test_targets_are_a_list_of_names_or_all_linear(compose_config, targets, starts):
    """`targets` is a union (a list, or the string all_linear): its errors name the field, not the union's member."""
    overrides = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", f"method.targets={targets}"]
    with pytest.raises(ConfigError) as err:
        resolve_cell(compose_config(overrides), overrides)
    assert str(err.value).startswith(starts), str(err.value)
    ok = ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "method.targets=all_linear"]
    assert resolve_cell(compose_config(ok), ok).method.targets == "all_linear"


# ---------------------------------------------------------------- the runner: exit 2, one line, nothing written
@pytest.mark.parametrize(
    "overrides,line",
    [
        (
            ["+table=glue", "model=tiny-roberta", "task=rte", "train.learning_rate=-1"],
            "error: train.learning_rate=-1: must be greater than 0",
        ),
        (["+table=glue", "model=tiny-roberta", "task=rte", "seed=1.5"], "error: seed=1.5: must be a valid integer"),
        (
            ["+table=glue", "model=tiny-roberta", "task=rte", "method.dropout=1.5"],
            "error: method.dropout=1.5: must be less than 1",
        ),
        (
            ["+table=e2e", "model=tiny-gpt2", "task=e2e", "decode.num_beams=0"],
            "error: decode.num_beams=0: must be greater than or equal to 1",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "task=rte", "train.lerning_rate=1"],
            "error: train.lerning_rate: unknown key; allowed keys of train:",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "task=rte", "train.learning_rate=inf"],
            "error: train.learning_rate=inf: must be a finite number",
        ),
        (
            ["+table=glue", "model=tiny-roberta", "task=rte", "paths.results_dir={tmp}/a-file/results"],
            "error: paths.results_dir={tmp}/a-file/results: is under {tmp}/a-file, which is a file",
        ),
    ],
    ids=["learning_rate", "seed", "lora_dropout", "num_beams", "hydra_unknown_key", "inf", "results_dir"],
)
def test_runner_exits_2_with_one_line_and_writes_nothing(tmp_path, overrides, line):
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "results"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    env.pop("REPRO_DEBUG", None)
    (tmp_path / "a-file").write_text("not a folder\n")
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    line = line.format(tmp=tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", *overrides],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(line), proc.stderr
    assert not (tmp_path / "results").exists()  # no record, no lock, no folder of the cell
    assert (tmp_path / "a-file").read_text() == "not a folder\n"
