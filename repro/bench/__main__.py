"""python -m repro.bench <latency|train|storage|decode|serve|sweep|roofline|all> [--quick] [--device cpu|cuda] [--out-dir DIR]
[--name STEM] [--grid 16x256,1x128] ...     (console script: repro-bench)

Each benchmark writes <out-dir>/<name>.json (default results/bench/<what>.json, <what>-quick.json with --quick) and
prints its table; --name picks another file name for one benchmark (e.g. latency-32x512)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from repro import cli
from repro.bench import BENCHMARKS
from repro.cli import Deprecated, add_out_dir, command
from repro.errors import ReproError
from repro.paths import output_dir


def parser() -> cli.ArgumentParser:
    p = cli.parser("bench", __doc__)
    p.add_argument("what", choices=[*BENCHMARKS, "all"])
    p.add_argument("--quick", action="store_true", help="tiny models, few repeats: seconds (tests, smoke runs)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    add_out_dir(p, "results/bench", old_out=False)
    p.add_argument("--name", default=None, help="the output file's name without .json (one benchmark only)")
    p.add_argument("--out", dest="out_file", type=Path, action=Deprecated, new="--out-dir DIR --name STEM")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, = available cores)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-min load average is at most this")
    p.add_argument(
        "--max-wait-s", type=float, default=600.0, help="...but wait no longer than this, then measure anyway"
    )
    # latency
    p.add_argument("--grid", default=None, help="latency cells as BxS,BxS (default: Table 1's 32x512,16x256,1x128)")
    p.add_argument("--budget-s", type=float, default=None, help="latency: total seconds for the timed rounds (600)")
    p.add_argument("--min-rounds", type=int, default=2)
    p.add_argument("--max-rounds", type=int, default=100)
    # train / storage
    p.add_argument(
        "--models",
        default=None,
        help="train/storage: comma-separated model names (roberta-base,gpt2-medium); decode: the model",
    )
    p.add_argument("--methods", default=None, help="train/storage: comma-separated methods (default: all registered)")
    p.add_argument("--batch", type=int, default=None, help="train: batch size (8)")
    p.add_argument("--seq", type=int, default=None, help="train: sequence length (128)")
    p.add_argument("--steps", type=int, default=None, help="train: timed steps per method (roberta 6, gpt2-medium 3)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="train: fp32, or bf16 autocast")
    p.add_argument("--fast-path", action="store_true", help="train: train.fast_path's engine (repro.precision)")
    p.add_argument("--peft-rounds", type=int, default=None, help="train: alternating rounds ours vs PEFT (12)")
    p.add_argument("--switches", type=int, default=None, help="storage: task switches timed per kind (10)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # here, after parsing: torch and the benchmarks' models load only for a run, not for --help or a usage error
    import torch

    from repro.bench import common

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise ReproError("--device=cuda: no CUDA device on this machine (torch.cuda.is_available() is False)")
    if args.out_file is not None:  # the old --out FILE
        args.out_dir, args.name = args.out_file.parent, args.out_file.stem
    if args.name and args.what == "all":
        raise ReproError(f"--name={args.name}: names the output of one benchmark, not of all")
    folder = output_dir(args.out_dir or common.RESULTS_DIR, "--out-dir")  # before any benchmark runs
    if args.threads:
        torch.set_num_threads(args.threads)
    for what in BENCHMARKS if args.what == "all" else (args.what,):
        module = importlib.import_module(f"repro.bench.{what}")
        result = module.run(args)
        out = folder / f"{args.name or what + ('-quick' if args.quick else '')}.json"
        common.write_json(result, out)
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
