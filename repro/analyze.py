"""Section 7 analysis of trained LoRA adapters (figures, markdown and JSON under results/analysis/).

    python -m repro.analyze report --table rank --model minilm --task sst2 --family qv --r-small 8 --r-large 64
    python -m repro.analyze subspace --a results/rank/minilm/lora.qv_r8/sst2/seed0.safetensors \\
                                     --b results/rank/minilm/lora.qv_r64/sst2/seed0.safetensors [--layer 3]
    python -m repro.analyze spectrum --adapter results/rank/minilm/lora.qv_r8/sst2/seed0.safetensors
    python -m repro.analyze amplification --adapter results/rank/minilm/lora.qv_r8/sst2/seed0.safetensors [...]
    python -m repro.analyze ablation rank          # Table 6; `which_weights` for Table 5

Layers on the command line and in the outputs are 1-based (the paper's "layer 48 of 96"); --layer defaults to the
middle one. ΔW is always (alpha/r)·B A from the checkpoint's factors, in fp32.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# One BLAS thread: the SVDs here are small (d <= a few thousand), and a multi-threaded OpenBLAS on a busy 2-core
# machine runs them 25x slower (6.6 s instead of 0.25 s for 384 x 384). Set before numpy loads; the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from repro.cli import add_out_dir, add_results_dir, add_strict, command, parser, report_unreadable, results_dir  # noqa: E402
from repro.config import options  # noqa: E402
from repro.errors import ReproError  # noqa: E402
from repro.paths import input_dir, input_file, output_dir  # noqa: E402
from repro.results import load_records  # noqa: E402


def _name(path: str) -> str:
    p = Path(path)
    parts = p.with_suffix("").parts[-4:]  # <method dir>/<task>/seed<k> and the model above it
    return "_".join(parts).replace("lora.", "")


def cmd_subspace(args) -> list[Path]:
    # imported per command, for start-up: `ablation` (records, YAML) runs without torch and matplotlib
    from repro.analysis import figures
    from repro.analysis.factors import load_adapter
    from repro.analysis.report import middle_layer, phi_summary, random_grid, subspace_grids

    a, b = load_adapter(args.a), load_adapter(args.b)
    n_layers = len(a.layers)
    layer = args.layer - 1 if args.layer else middle_layer(n_layers)
    grids = subspace_grids(a, b, args.basis)
    out = Path(args.out)
    stem = f"subspace_{args.basis}_{_name(args.a)}__vs__{_name(args.b)}"
    d = a[(layer, a.targets[0])].A.shape[1]
    label = f"layer {layer + 1} of {n_layers}"
    files = []
    if a.r == b.r:
        files.append(
            figures.figure4(
                grids[layer],
                random_grid(a.r, b.r, d),
                label,
                a.r,
                out / f"{stem}_layer{layer + 1}.png",
                vmax=1.0,
                note=f"{args.a} vs {args.b}",
            )
        )
    else:
        files.append(
            figures.figure3(
                grids[layer], label, a.r, b.r, out / f"{stem}_layer{layer + 1}.png", note=f"{args.a} vs {args.b}"
            )
        )
    files.append(figures.per_layer(grids, f"φ({args.basis}), {args.a} vs {args.b}", out / f"{stem}_all_layers.png"))
    js = out / f"{stem}.json"
    js.write_text(
        json.dumps(
            {
                "a": args.a,
                "b": args.b,
                "basis": args.basis,
                "summary": phi_summary(grids, d),
                "grids": {f"{l}/{t}": g.tolist() for l, bt in grids.items() for t, g in bt.items()},
            },
            indent=1,
        )
        + "\n"
    )
    s = phi_summary({layer: grids[layer]}, d)
    for v in s.values():
        print(
            f"layer {layer + 1} ΔW_{v['target']}: φ(1,1)={v['phi_1_1']:.3f}  φ(1,n)={v['phi_1_n']:.3f}  "
            f"mean φ(i,i)={v['diag_mean']:.3f}  (random: {v['random_expect_1_1']:.4f}, {v['random_expect_diag_mean']:.4f})"
        )
    return files + [js]


def cmd_spectrum(args) -> list[Path]:
    # imported per command, for start-up: `ablation` (records, YAML) runs without torch and matplotlib
    from repro.analysis import figures
    from repro.analysis.factors import base_weights, load_adapter
    from repro.analysis.linalg import singular_values
    from repro.analysis.report import middle_layer, spectrum_rows

    a = load_adapter(args.adapter)
    W = base_weights(a)
    layer = args.layer - 1 if args.layer else middle_layer(len(a.layers))
    out = Path(args.out)
    stem = f"spectrum_{_name(args.adapter)}"
    rows = spectrum_rows(a, W)
    files = []
    for t in a.targets:
        curves = {
            f"ΔW_{t} r={a.r}": singular_values(a[(layer, t)].delta())[: a.r],
            f"W_{t} (pretrained)": singular_values(W[(layer, t)]),
        }
        files.append(
            figures.spectra(
                curves, f"{args.adapter}: ΔW_{t} and W_{t}, layer {layer + 1}", out / f"{stem}_{t}_layer{layer + 1}.png"
            )
        )
    js = out / f"{stem}.json"
    js.write_text(json.dumps({"adapter": args.adapter, "rows": rows}, indent=1) + "\n")
    for row in rows:
        if row["layer"] == layer:
            print(
                f"layer {layer + 1} ΔW_{row['target']}: numerical rank {row['dW_numerical_rank']} (r={row['r']}), "
                f"energy {json.dumps({k: round(v, 3) for k, v in row['dW_energy'].items()})}"
            )
    return files + [js]


def cmd_amplification(args) -> list[Path]:
    # imported per command, for start-up: `ablation` (records, YAML) runs without torch and matplotlib
    from repro.analysis.factors import base_weights, load_adapter
    from repro.analysis.report import amplification_rows, middle_layer, per_layer_markdown, table7_markdown

    rows_by_r, n_layers, targets = {}, None, None
    for path in args.adapter:
        a = load_adapter(path)
        rows_by_r[a.r] = amplification_rows(a, base_weights(a), seed=args.seed)
        n_layers, targets = len(a.layers), a.targets
    layer = args.layer - 1 if args.layer else middle_layer(n_layers)
    md = (
        "\n".join(
            table7_markdown(rows_by_r, layer, n_layers, targets) + ["## per layer", ""] + per_layer_markdown(rows_by_r)
        )
        + "\n"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "amplification_" + "__".join(_name(p) for p in args.adapter)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {"adapters": args.adapter, "rows": {f"r{r}": v for r, v in rows_by_r.items()}}, indent=1, default=float
        )
        + "\n"
    )
    print(md)
    return [out / f"{stem}.md", out / f"{stem}.json"]


def cmd_report(args) -> list[Path]:
    # imported per command, for start-up: `ablation` (records, YAML) runs without torch and matplotlib
    from repro.analysis.report import report

    res = report(
        args.results,
        args.table,
        args.model,
        args.task,
        args.family,
        args.r_small,
        args.r_large,
        args.out if args.out != DEFAULT_OUT else None,
        seed=args.seed,
    )
    print(Path(res["out_dir"]) / "report.md")
    return [Path(f) for f in res["files"]]


def cmd_ablation(args) -> list[Path]:
    # imported per command, for start-up: `ablation` (records, YAML) runs without torch and matplotlib
    from repro.analysis.ablation import write

    md, paths = write(args.table, args.results, args.out if args.out != DEFAULT_OUT else None, args.model)
    print(md)
    return paths


DEFAULT_OUT = "results/analysis"


@command
def main(argv=None) -> int:
    ap = parser("analyze", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{report,subspace,spectrum,amplification,ablation}")

    def common(p):
        add_out_dir(p, DEFAULT_OUT, dest="out", default=DEFAULT_OUT)
        p.add_argument(
            "--layer", type=int, default=None, help="1-based layer for the single-layer figure (default: middle)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")

    p = sub.add_parser("report", help="Figures 3/4/6/7, spectra and Table 7 for one table's LoRA cells")
    common(p)
    add_results_dir(p, dest="results")
    add_strict(p)
    p.add_argument("--table", default="rank")
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--family", default="qv", help="variant prefix: lora.<family>_r<r>")
    p.add_argument("--r-small", type=int, default=8)
    p.add_argument("--r-large", type=int, default=64)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("subspace", help="φ(A_a, A_b, i, j) between two checkpoints")
    common(p)
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--basis", choices=("A", "dW"), default="A", help="right-singular vectors of A (paper) or of ΔW")
    p.set_defaults(func=cmd_subspace)

    p = sub.add_parser("spectrum", help="singular values of ΔW and W, energy in the top-k directions")
    common(p)
    p.add_argument("--adapter", required=True)
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("amplification", help="Table 7: ‖UᵀWV‖_F and the amplification factor")
    common(p)
    p.add_argument("--adapter", required=True, nargs="+")
    p.set_defaults(func=cmd_amplification)

    p = sub.add_parser("ablation", help="Table 5 (which_weights) or 6 (rank) from the records")
    p.add_argument("table", choices=("rank", "which_weights"))
    add_results_dir(p, dest="results")
    add_out_dir(p, DEFAULT_OUT, dest="out", default=DEFAULT_OUT)
    add_strict(p)
    p.add_argument("--model", default=None, help="read this model's records instead of each row's (default: the row's)")
    p.set_defaults(func=cmd_ablation)

    args = ap.parse_args(argv)
    check_inputs(args)
    np.set_printoptions(precision=3, suppress=True)
    try:
        files = args.func(args)
    except ValueError as exc:  # how repro.analysis.factors refuses an adapter it cannot read as LoRA factors (a DoRA
        # or PiSSA checkpoint, no factors, a record beside it that is not JSON): bad input, one line
        raise ReproError(str(exc)) from exc
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def check_inputs(args) -> None:
    """Names and paths, before any work (repro.paths): the table and model exist, the results folder is a folder and
    each record in it that cannot be read is named (--strict: an error), each adapter is a safetensors file, the
    output folder can be written."""
    reads_records = hasattr(args, "results")  # report, ablation: the records under --results-dir
    if reads_records:
        args.results = results_dir(args, "results")
        if args.cmd == "report":
            for group, name in (("table", args.table), ("model", args.model)):
                if name not in options(group):
                    raise ReproError(f"--{group}={name}: no such {group}; {group}s: {', '.join(options(group))}")
        input_dir(args.results, "--results-dir")
        report_unreadable(load_records(args.results, args.table)[1], args.strict)
    for flag in ("a", "b", "adapter"):
        value = getattr(args, flag, None)
        for path in value if isinstance(value, list) else [value] if value else []:
            input_file(path, f"--{flag}", kind="safetensors")
    # report and ablation write under <results-dir>/analysis by default, the others under results/analysis
    default = Path(args.results) / "analysis" if reads_records else Path(DEFAULT_OUT)
    output_dir(default if args.out == DEFAULT_OUT else args.out, "--out-dir")


if __name__ == "__main__":
    sys.exit(main())
