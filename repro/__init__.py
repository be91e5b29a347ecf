"""lora-repro: reproduce LoRA (Hu et al., ICLR 2022) end to end.

The pipeline is config -> cell -> record -> table: `repro.run` trains and scores one grid cell and writes one
record; `repro.tables` turns records into the paper's tables; `repro.analysis` tests the low-rank hypothesis.
"""

import logging as _logging
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"

# bitsandbytes (the 4-bit base of QLoRA; peft imports it when installed) warns at import, on CPUs with avx512-bf16, that
# it cannot fetch an optional kernel from the hub ("pip install kernels"): harmless offline (its own CPU path runs),
# and it would be the first line of every command's output. Its other warnings stay.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
