"""One way to read a config file: `load_group(group, name)` is conf/<group>/<name>.yaml, the option `<group>=<name>`
as it stands on disk (its own keys: no composition, no defaults list applied, a `# @package` header not applied).

Every reader of a single option goes through it: the parameter counts (repro.params), the benchmarks, the planner's
fast composition, the analysis' base models. A whole cell's config is Hydra's composition (repro.run, repro.cell).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from repro import CONF_DIR
from repro.errors import ReproError


def group_path(group: str, name: str) -> Path:
    """conf/<group>/<name>.yaml (group may be nested: `hydra/launcher`)."""
    return CONF_DIR / group / f"{name}.yaml"


def options(group: str) -> tuple[str, ...]:
    """Every option of a group (the stems of conf/<group>/*.yaml), sorted."""
    return tuple(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))


def load_group(group: str, name: str, **overrides) -> DictConfig:
    """The option's file as a DictConfig, with `overrides` merged on top (e.g. `load_group("method", "lora", r=4)`);
    a fresh object on every call: the caller may change it."""
    path = group_path(group, name)
    if not path.exists():
        raise ReproError(
            f"{group}={name}: no such option (conf/{group}/{name}.yaml); options: {', '.join(options(group))}"
        )
    cfg = OmegaConf.load(path)
    return OmegaConf.merge(cfg, overrides) if overrides else cfg


def read_group(group: str, name: str) -> dict | None:
    """The option's file as plain data (dicts, lists, scalars; interpolations left as written), or None when the
    option does not exist: for readers of records (tables, claims, analysis) that fall back to a default."""
    path = group_path(group, name)
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else None
