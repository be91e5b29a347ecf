"""The jobs of a table's sweep: Hydra's cartesian product of `hydra.sweeper.params`, narrowed to the table's rows, and
each job's resolved cell.

A table's `hydra.sweeper.params` span models x methods x tasks x seeds. Their cartesian product holds
combinations that are not rows of the paper's table (DeBERTa x AdptP): `filter_jobs` keeps a job only when its
(model, method, variant) is a row of `table.rows`, or a stand-in model (`table.stand_ins`) for the model of a row
(a stand-in also runs the methods its paper model has no row for, with the method's own config).
When no `variant` axis is given, every (model, method) expands to all of its rows' variants (RoBERTa-large AdptP
3M and 0.8M are two rows); `variant=r16,dagger` on the command line makes it an ordinary, filtered axis.

A job's cell is resolved once per (model, method, variant, task) and only its seed set per job (`resolve_jobs`), with
a fast composition (`fast_compose`: the primary config with the job's group files swapped in) where it gives what
Hydra would.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from hydra._internal.core_plugins import basic_sweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from repro import PROJECT_ROOT
from repro.cell import resolve_cell
from repro.config import group_path, load_group, options
from repro.method_traits import VARIANT_METHODS

# ---------------------------------------------------------------- grid expansion and the row filter


def override_key(override: str) -> tuple[str, str]:
    """`+model=x` -> ("model", "x")."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def job_dict(job: list[str]) -> dict[str, str]:
    return dict(override_key(o) for o in job)


def row_variants(table: DictConfig) -> dict[tuple[str, str], list[str]]:
    """(model, method) -> its rows' variants. A stand-in model takes the rows of the model it stands in for, and runs
    every other method too (variant default: the method's own config), so baselines the paper did not run on that
    model can be compared under the same CPU schedule."""
    out: dict[tuple[str, str], list[str]] = OrderedDict()
    for row in table.rows:
        out.setdefault((row.model, row.method), []).append(row.get("variant", "default"))
    for small, big in (table.get("stand_ins") or {}).items():
        for (model, method), variants in list(out.items()):
            if model == big:
                out.setdefault((small, method), list(variants))
        for method in options("method"):
            if method not in VARIANT_METHODS:  # the LoRA variants run only where a table lists them
                out.setdefault((small, method), ["default"])
    return out


def row_seeds(table: DictConfig) -> dict[tuple[str, str, str], set[str]]:
    """(model, method, variant) -> the seeds of a row that runs fewer seeds than the table (`seeds:` on the row)."""
    return {
        (r.model, r.method, r.get("variant", "default")): {str(x) for x in r.seeds}
        for r in table.rows
        if r.get("seeds") is not None
    }


@dataclass
class Expansion:
    kept: list[list[str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> number of jobs

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def filter_jobs(jobs: list[list[str]], cfg: DictConfig) -> Expansion:
    """Keep the jobs whose (model, method, variant) is a row of cfg.table (or a stand-in for one) and whose task is
    one of the table's tasks; expand a missing variant axis to the rows' variants. Nothing is dropped silently:
    the reasons are counted."""
    table = cfg.table
    allowed = row_variants(table)
    seeds_of = row_seeds(table)
    tasks = set(table.get("tasks") or [])
    out = Expansion()

    def keep(job: list[str], variant: str) -> None:
        seeds = seeds_of.get((d["model"], d["method"], variant))
        if seeds is not None and d["seed"] not in seeds:
            out.dropped[
                f"{d['model']} x {d['method']} seed {d['seed']}: the row runs seeds {', '.join(sorted(seeds))}"
            ] += 1
        else:
            out.kept.append(job)

    for job in jobs:
        d = job_values(cfg, job)
        has_variant = any(override_key(o)[0] == "variant" for o in job)
        pair = (d["model"], d["method"])
        if pair not in allowed:
            out.dropped[f"{d['model']} x {d['method']}: not a row of table {table.name}"] += 1
            continue
        if tasks and d["task"] not in tasks:
            out.dropped[f"task {d['task']}: not a task of table {table.name}"] += 1
            continue
        if has_variant:
            if d["variant"] in allowed[pair]:
                keep(list(job), d["variant"])
            else:
                out.dropped[
                    f"{d['model']} x {d['method']} variant {d['variant']}: not a row (rows: {', '.join(allowed[pair])})"
                ] += 1
            continue
        for variant in allowed[pair]:
            keep(list(job) if variant == "default" else [*job, f"variant={variant}"], variant)
    return out


def cartesian(overrides) -> list[list[str]]:
    """Hydra's BasicSweeper product of parsed overrides, as one flat list of jobs."""
    return basic_sweeper.BasicSweeper.split_arguments(overrides, None)[0]


# ---------------------------------------------------------------- each job's resolved cell


FAST_GROUPS = ("model", "method", "task")


_BASES: dict[int, DictConfig] = {}


def _base(primary: DictConfig) -> DictConfig:
    """The primary config less its `hydra` node (copied once per primary config: copies are slow)."""
    if id(primary) not in _BASES:
        base = primary.copy()
        with open_dict(base):
            base.pop("hydra", None)
        _BASES.clear()
        _BASES[id(primary)] = base
    return _BASES[id(primary)]


def job_values(primary: DictConfig, job: list[str]) -> dict[str, str]:
    """The job's model, method, variant, task and seed (the primary config's where the job does not set them), and
    any other override it has."""
    return {
        "model": primary.model.name,
        "method": primary.method.name,
        "variant": primary.variant,
        "task": primary.task.name,
        "seed": str(primary.seed),
        **job_dict(job),
    }


def cell_key(primary: DictConfig, job: list[str]) -> tuple:
    """What identifies a job's cell up to its seed: (model, method, variant, task) and any other override."""
    return tuple(sorted((k, v) for k, v in job_values(primary, job).items() if k != "seed"))


def resolve_jobs(config_loader, primary: DictConfig, jobs: list[list[str]], fallback: bool = True):
    """Yield (job, cfg, note) with cfg resolved once per cell and only its seed set per job (cfg is shared: read it,
    do not keep it)."""
    parser = OverridesParser.create()
    cache: dict[tuple, tuple] = {}
    for job in jobs:
        key = cell_key(primary, job)
        if key not in cache:
            try:
                cache[key] = resolve_job(config_loader, primary, job, fallback=fallback, parser=parser)
            except Exception as exc:  # noqa: BLE001 - only without fallback: the caller decides
                cache[key] = (None, f"{type(exc).__name__}: {exc}")
        cfg, note = cache[key]
        if cfg is not None:
            with open_dict(cfg):
                cfg.seed = int(job_dict(job).get("seed", primary.seed))
        yield job, cfg, note


def fast_compose(primary: DictConfig, job: list[str], parser=None) -> DictConfig | None:
    """The job's config without Hydra's full composition (which takes ~0.5 s a job): the primary config with the
    job's model/method/task files swapped in and its values set, as Hydra would. None when the job needs more than
    that (another table, a deletion, a group file with its own defaults list); the caller then composes for real.
    Used only for planning and for skipping done cells: a difference can only change a fingerprint, so at worst a
    done cell is launched and skips itself."""
    parser = parser or OverridesParser.create()
    cfg = _base(primary).copy()
    values = []
    for o in parser.parse_overrides(list(job)):
        key = o.key_or_group
        if o.is_delete() or o.package:
            return None
        if key.startswith("hydra"):
            continue
        if key == "table":
            if o.value() != cfg.table.name:
                return None
            continue
        if key == "debug":  # a debug preset (debug=smoke) is the primary config's, already composed into it
            if o.value() != (cfg.get("debug") or {}).get("name"):
                return None
            continue
        if key in FAST_GROUPS:
            path = group_path(key, o.value())
            if not path.exists():
                if key != "method":
                    return None
                # a method whose config is not written yet: its name only (the table row gives its settings)
                node = OmegaConf.create({"name": o.value(), "_missing_config": str(path.relative_to(PROJECT_ROOT))})
                with open_dict(cfg):
                    cfg[key] = node
                continue
            if (
                "@package _global_" in path.read_text()
            ):  # e.g. task/e2e.yaml also sets `decode:`: Hydra's loader places it
                return None
            node = load_group(key, o.value())
            if "defaults" in node:
                return None
            with open_dict(cfg):
                cfg[key] = node
            continue
        if key.split("/")[0] in ("local", "paths"):
            return None
        values.append(o)
    with open_dict(cfg):
        for o in values:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=o.is_add() or o.is_force_add())
    return cfg


def resolve_job(
    config_loader, primary: DictConfig, job: list[str], fallback: bool = True, parser=None
) -> tuple[DictConfig, str | None]:
    """One job's resolved cell, as the launcher would compose it: (cfg, None). With `fallback`, a job whose method
    config does not compose yet, or whose cell does not resolve, gives (an estimate-only cfg, a note saying why)."""
    note = None
    cfg = fast_compose(primary, job, parser)
    if cfg is not None and "_missing_config" in cfg.method:
        if not fallback:
            raise FileNotFoundError(f"{cfg.method._missing_config} does not exist")
        note = (
            f"method={cfg.method.name}: {cfg.method._missing_config} does not exist yet; estimated from the table row"
        )
        OmegaConf.set_struct(cfg, False)
        with open_dict(cfg):
            del cfg.method["_missing_config"]
    if cfg is None:
        try:
            cfg = config_loader.load_sweep_config(primary, list(job))
        except Exception as exc:  # e.g. conf/method/<name>.yaml not written yet: estimate from the table row
            if not fallback:
                raise
            d = job_dict(job)
            cfg = config_loader.load_sweep_config(primary, [o for o in job if override_key(o)[0] != "method"])
            OmegaConf.set_struct(cfg, False)
            cfg.method = {"name": d.get("method", primary.method.name)}
            note = (
                f"method={d.get('method')} does not compose ({str(exc).splitlines()[0]}): estimated from the table row"
            )
        with open_dict(cfg):
            cfg.pop("hydra", None)
    try:
        return resolve_cell(cfg, list(job), check=note is None), note
    except Exception as exc:
        if not fallback:
            raise
        note = (
            f"{cfg.model.name}/{cfg.method.name}: cells do not resolve "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); estimated without struct or schema checks"
        )
        OmegaConf.set_struct(cfg, False)
        return resolve_cell(cfg, list(job), check=False), note
