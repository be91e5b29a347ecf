"""Registers `hydra/sweeper: table` (Hydra imports every module under the hydra_plugins namespace at start-up)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class TableSweeperConf:
    _target_: str = "hydra_plugins.repro_table_sweeper.table_sweeper.TableSweeper"
    # jobs handed to the launcher at once (null: all); a SLURM array never exceeds this size
    max_batch_size: int | None = None
    # the grid, as for the basic sweeper: axis -> comma-separated values (the table configs set it)
    params: dict[str, str] | None = None
    # keep only (model, method, variant) combinations that are rows of the table (or stand-ins); false: plain product
    only_table_rows: bool = True


ConfigStore.instance().store(group="hydra/sweeper", name="table", node=TableSweeperConf, provider="repro")

# conf/hydra/launcher/submitit_local.yaml deliberately shadows the plugin's schema of the same name (to give CPU
# defaults); Hydra validates it against that schema and warns that the matching is deprecated. It works in 1.3.
import warnings  # noqa: E402

warnings.filterwarnings(
    "ignore", message=r"(?s).*'hydra/launcher/submitit_local' is validated against ConfigStore schema"
)
