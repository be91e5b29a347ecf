"""lora-repro: reproduce LoRA (Hu et al., ICLR 2022) end to end.

The pipeline is config -> cell -> record -> table: `repro.run` trains and scores one grid cell and writes one
record; `repro.tables` turns records into the paper's tables; `repro.analysis` tests the low-rank hypothesis.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
