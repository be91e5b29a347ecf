"""The table sweeper on the real configs: the grid of conf/table/glue.yaml narrowed to the rows of the paper's Table 2,
the variant axis, stand-ins, the launchers' configs and the dry run's estimate."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import open_dict

from hydra_plugins.repro_table_sweeper import table_sweeper
from repro import CONF_DIR, PROJECT_ROOT, records
from repro.cell import resolve_cell
from repro.plan import cost, grid, lengths, order
from repro.train import batch_plan, eval_batch


def sweeper_for(overrides: list[str], tmp_path):
    """A TableSweeper as Hydra builds it for `python -m repro.run -m <overrides>`, with the real config loader. The class
    is looked up now, not at import: Hydra's plugin scan (on the first compose) re-executes the plugin modules in
    place, and a class taken before it subclasses a BasicSweeper that no longer is the module's."""
    cfg = compose(
        config_name="config", overrides=[*overrides, f"paths.results_dir={tmp_path}"], return_hydra_config=True
    )
    assert cfg.hydra.sweeper._target_.endswith("TableSweeper")
    sweeper = table_sweeper.TableSweeper(
        max_batch_size=cfg.hydra.sweeper.max_batch_size, params=dict(cfg.hydra.sweeper.params or {})
    )
    sweeper.config = cfg
    sweeper.hydra_context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    return sweeper


@pytest.fixture
def hydra_ctx():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def cells(jobs):
    out = set()
    for job in jobs:
        d = grid.job_dict(job)
        out.add((d.get("model"), d.get("method"), d.get("variant", "default"), d.get("task"), d.get("seed")))
    return out


def test_full_grid_is_every_row_of_table2(hydra_ctx, tmp_path):
    sweeper = sweeper_for(["+table=glue"], tmp_path)
    jobs = sweeper.expand([])
    table = sweeper.config.table
    got = cells(jobs)
    rows = {(r.model, r.method, r.get("variant", "default")) for r in table.rows}
    assert {(m, me, v) for m, me, v, _, _ in got} == rows  # every paper row, nothing else
    assert len(rows) == 14
    assert len(jobs) == len(rows) * len(table.tasks) * len(table.seeds) == 560
    # the product's non-rows are counted, not silently dropped
    assert sweeper.expansion.n_dropped == 3 * 6 * 8 * 5 - 10 * 8 * 5
    assert any("deberta-v2-xxlarge x adapter_p" in reason for reason in sweeper.expansion.dropped)


@pytest.mark.parametrize("table", sorted(p.stem for p in (CONF_DIR / "table").glob("*.yaml")))
def test_every_cell_of_every_table_resolves(hydra_ctx, tmp_path, table):
    """Each job of a table's full grid composes and resolves strictly (no fallback), as the launcher would run it."""
    sweeper = sweeper_for([f"+table={table}"], tmp_path)
    jobs = sweeper.expand([])
    assert jobs
    loader = GlobalHydra.instance().config_loader()
    primary = sweeper.config
    for job in {tuple(j for j in job if not j.startswith("seed=")) for job in jobs}:  # the seed changes nothing here
        cfg, note = grid.resolve_job(loader, primary, [f"+table={table}", *job], fallback=False)
        assert note is None and cfg.task.name in cfg.table.tasks, job


def test_stand_in_grid_of_the_must_show_command(hydra_ctx, tmp_path):
    args = ["model=tiny-roberta", "method=lora,ft", "task=rte,mrpc", "seed=0,1", "train.max_steps=5"]
    sweeper = sweeper_for(["+table=glue", "model=tiny-roberta", "train.max_steps=5"], tmp_path)
    jobs = sweeper.expand(args)
    assert len(jobs) == 8
    assert {c[:3] for c in cells(jobs)} == {("tiny-roberta", "lora", "default"), ("tiny-roberta", "ft", "default")}
    assert all("train.max_steps=5" in job for job in jobs)


def test_variant_axis_expands_and_filters(hydra_ctx, tmp_path):
    sweeper = sweeper_for(["+table=glue"], tmp_path)
    jobs = sweeper.expand(["model=roberta-large", "method=adapter_p,adapter_h,lora", "task=rte", "seed=0"])
    assert {(c[1], c[2]) for c in cells(jobs)} == {
        ("adapter_p", "r64"),
        ("adapter_p", "r16"),
        ("adapter_h", "r64"),
        ("adapter_h", "r8"),
        ("lora", "default"),
        ("lora", "dagger"),
    }
    sweeper = sweeper_for(["+table=glue"], tmp_path)
    jobs = sweeper.expand(
        ["model=roberta-base,roberta-large", "method=lora,adapter_d", "variant=dagger,r16", "task=rte", "seed=0"]
    )
    assert {c[:3] for c in cells(jobs)} == {("roberta-large", "lora", "dagger"), ("roberta-base", "adapter_d", "r16")}
    # a stand-in takes the variants of the model it stands in for
    jobs = sweeper_for(["+table=glue"], tmp_path).expand(
        ["model=tiny-roberta", "method=adapter_d", "task=rte", "seed=0"]
    )
    assert {c[2] for c in cells(jobs)} == {"r16", "r48"}


def test_task_outside_the_table_is_dropped_with_a_reason(hydra_ctx, tmp_path):
    cfg = compose(config_name="config", overrides=["+table=glue"])
    out = grid.filter_jobs(
        [["model=roberta-base", "method=lora", "task=e2e"], ["model=roberta-base", "method=lora", "task=rte"]], cfg
    )
    assert len(out.kept) == 1 and out.n_dropped == 1 and "task e2e" in next(iter(out.dropped))


def test_fast_compose_matches_hydra_composition(hydra_ctx, tmp_path):
    """Skipping done cells before launch relies on the planner's config giving the job's own fingerprint."""
    # as in a real multirun, every job carries the command line's constant overrides (sweeper_for adds results_dir)
    job = [
        "model=tiny-roberta",
        "method=lora",
        "task=mrpc",
        "seed=1",
        "+table=glue",
        "train.max_steps=5",
        f"paths.results_dir={tmp_path}",
    ]
    sweeper = sweeper_for(["+table=glue", "model=tiny-roberta", "train.max_steps=5"], tmp_path)
    fast, note = grid.resolve_job(sweeper.hydra_context.config_loader, sweeper.config, job, fallback=False)
    assert note is None
    full = sweeper.hydra_context.config_loader.load_sweep_config(sweeper.config, job)
    overrides = list(full.hydra.overrides.task)
    with open_dict(full):
        del full["hydra"]
    assert records.fingerprint(fast) == records.fingerprint(resolve_cell(full, overrides))


def test_estimate_formula(hydra_ctx):
    ov = ["+table=glue", "model=roberta-base", "method=lora", "task=rte"]
    cfg = resolve_cell(compose(config_name="config", overrides=ov), ov)
    est = cost.estimate(cfg)
    n = 12 * (4 * 768**2 + 2 * 768 * 3072)
    assert est["params"] == n
    examples = 2490 * 80  # RTE train x 80 epochs (roberta_base_rte.sh)
    b, b_eval = batch_plan(cfg.train)[0], eval_batch(cfg.train, cost.eval_floor(cfg))
    assert (b, b_eval) == (16, 32)
    tokens = lengths.padded_length("rte", b, 512)[0]  # dynamic padding: a batch of 16 RTE pairs is ~190 tokens long
    assert 150 < tokens < 250 and est["tokens"] == tokens and est["lengths"] == "measured on train"
    flops = 4 * n * examples * tokens + 2 * n * 277 * lengths.padded_length("rte", b_eval, 512)[0] * 80
    assert est["examples"] == examples and est["steps"] == -(-examples // cfg.train.global_batch_size)
    assert est["epochs"] == 80
    assert est["gpu_hours"] == pytest.approx(flops / 10e12 / 3600)  # fp32 at 10 TFLOP/s


def test_launcher_configs_compose(hydra_ctx):
    cfg = compose(config_name="config", overrides=["+table=glue", "hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    for key in (
        "partition",
        "gpus_per_node",
        "cpus_per_task",
        "mem_gb",
        "timeout_min",
        "array_parallelism",
        "max_num_timeout",
        "setup",
    ):
        assert key in launcher
    assert launcher.max_num_timeout > 0
    local = compose(
        config_name="config", overrides=["+table=glue", "hydra/launcher=submitit_local"], return_hydra_config=True
    )
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
    assert local.hydra.launcher.cpus_per_task == 1 and local.hydra.launcher.timeout_min > 0


def test_dry_run_prints_plan_and_runs_nothing(tmp_path):
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "results"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "repro.plan",
            "+table=glue",
            "model=roberta-base,tiny-roberta",
            "method=lora,adapter_p",
            "task=rte,mrpc",
            "seed=0,1",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    # roberta-base: lora is a row, adapter_p is not (dropped, with the reason); the stand-in tiny-roberta runs both
    assert "jobs: 12 (12 to run, 0 already done" in text
    assert "estimated GPU-hours (V100)" in text and "formula:" in text
    assert "roberta-base x adapter_p: not a row of table glue" in text
    assert "tiny-roberta x adapter_p" not in text
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_glue_grid_puts_every_mnli_source_in_an_earlier_wave(hydra_ctx, tmp_path):
    """Table 2's full grid: the 45 LoRA cells that start from MNLI (3 models x RTE, MRPC, STS-B x 5 seeds) are in the
    second wave, each after the MNLI cell of its model and seed."""
    sweeper = sweeper_for(["+table=glue"], tmp_path)
    jobs = sweeper.expand([])
    sources = order.init_sources(sweeper.hydra_context.config_loader, sweeper.config, jobs)
    waves = order.launch_waves(len(jobs), sources)
    assert [len(w) for w in waves] == [515, 45]
    wave_of = {i: k for k, w in enumerate(waves) for i in w}
    for i, src in sources.items():
        d, s = grid.job_dict(jobs[i]), grid.job_dict(jobs[src])
        assert d["method"] == "lora" and "variant" not in d and d["task"] in ("rte", "mrpc", "stsb")
        assert s == {**d, "task": "mnli"} and wave_of[src] < wave_of[i]
    assert {grid.job_dict(jobs[i])["model"] for i in sources} == {"roberta-base", "roberta-large", "deberta-v2-xxlarge"}


class RecordingLauncher:
    """Stands in for the SLURM launcher: launch() returns when its jobs have ended (as submitit's does); each job
    writes its cell's record, `ok` unless its overrides are in `fail`."""

    def __init__(self, sweeper, fail=()):
        self.sweeper, self.fail, self.calls = sweeper, [set(f) for f in fail], []

    def launch(self, batch, initial_job_idx):
        self.calls.append([grid.job_dict(job) for job in batch])
        returns = []
        for job, cfg, _ in grid.resolve_jobs(
            self.sweeper.hydra_context.config_loader, self.sweeper.config, batch, fallback=False
        ):
            status = "failed" if set(job) in self.fail else "ok"
            records.write_json_atomic(
                records.record_path(cfg),
                {
                    "status": status,
                    "error": "boom" if status == "failed" else None,
                    "fingerprint": records.fingerprint(cfg),
                },
            )
            returns.append(JobReturn(overrides=job, status=JobStatus.COMPLETED, _return_value=status))
        return returns


def test_sweep_launches_dependents_after_their_mnli_cell(hydra_ctx, tmp_path, capsys):
    """The sweep as `-m +table=glue` runs it on SLURM: MNLI cells are launched (and have ended) before the cells that
    start from them; a cell whose MNLI cell failed is not launched, and the sweep says why."""
    sweeper = sweeper_for(["+table=glue", f"paths.log_dir={tmp_path}/logs"], tmp_path)
    failing = ["model=roberta-base", "method=lora", "task=mnli", "seed=1"]
    sweeper.launcher = launcher = RecordingLauncher(sweeper, fail=[failing])
    sweeper.sweep(["model=roberta-base", "method=lora", "task=mnli,sst2,mrpc,rte,stsb", "seed=0,1"])
    order = [(d["task"], d["seed"]) for call in launcher.calls for d in call]
    first_call = {(d["task"], d["seed"]) for d in launcher.calls[0]}
    assert {("mnli", "0"), ("mnli", "1")} <= first_call and not first_call & {
        (t, s) for t in ("rte", "mrpc", "stsb") for s in "01"
    }
    assert sorted(order) == sorted(
        [(t, "0") for t in ("mnli", "sst2", "mrpc", "rte", "stsb")] + [("mnli", "1"), ("sst2", "1")]
    )
    out = capsys.readouterr().out
    for task in ("mrpc", "rte", "stsb"):
        assert (
            f"not run: model=roberta-base method=lora task={task} seed=1: its train.init_from source "
            f"({' '.join(failing)}) ended failed: boom" in out
        )
    # one progress line per finished cell, [k/N]: N is the jobs less those left out so far (here 10, then 7 once the
    # 3 whose MNLI cell failed are known), then the summary
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert [line.split("/")[0] for line in lines] == [f"[{k}" for k in range(1, 8)]
    assert lines[0].startswith("[1/10] ") and lines[-1].startswith("[7/7] ") and "ETA" not in lines[-1]
    assert any(line.startswith("[") and "glue/roberta-base/lora/mnli/seed1: failed (boom)" in line for line in lines)
    assert "glue/roberta-base/lora/sst2/seed0: ok, no accuracy recorded" in out  # the fake records have no metrics
    assert re.search(r"table sweeper: 10 jobs in \d+ s: 1 failed, 3 not run \(init_from source not ok\), 6 ok", out)
    assert "  not ok: glue/roberta-base/lora/mnli/seed1: boom" in out


def test_cpu_nlg_tables_run_the_rows_seeds(hydra_ctx, tmp_path):
    """e2e_cpu: six methods at seed 0, FT and LoRA also at seed 1 (a row's `seeds:`), and the fp32 check of LoRA at
    seed 0; webnlg_cpu: FT and LoRA."""
    sweeper = sweeper_for(["+table=e2e_cpu"], tmp_path)
    got = cells(sweeper.expand([]))
    assert got == {
        ("smollm2-135m", m, "default", "e2e", s)
        for m in ("ft", "fttop2", "adapter_l", "adapter_h", "prefix_layer", "lora")
        for s in ("0",)
    } | {("smollm2-135m", m, "default", "e2e", "1") for m in ("ft", "lora")} | {
        ("smollm2-135m", "lora", "fp32", "e2e", "0")
    }
    assert sweeper.expansion.n_dropped == 5
    assert any("seed 1: the row runs seeds 0" in reason for reason in sweeper.expansion.dropped)
    sweeper = sweeper_for(["+table=webnlg_cpu"], tmp_path)
    assert cells(sweeper.expand([])) == {("smollm2-135m", m, "default", "webnlg", "0") for m in ("ft", "lora")}


def test_cpu_nlg_tables_resolve_the_papers_recipe(hydra_ctx, tmp_path):
    args = ["+table=e2e_cpu", "model=smollm2-135m", "method=lora", "task=e2e"]
    cfg = resolve_cell(compose(config_name="config", overrides=[*args, f"paths.results_dir={tmp_path}"]), args)
    assert (cfg.method.r, cfg.method.alpha, cfg.method.dropout, list(cfg.method.targets)) == (4, 32, 0.1, ["q", "v"])
    assert cfg.train.learning_rate == 2e-4 and cfg.train.label_smoothing == 0.1 and cfg.train.global_batch_size == 8
    assert cfg.decode.num_beams == 10 and cfg.decode.pad_batches is True and cfg.decode.max_inputs is None
    assert list(cfg.decode.eos_token_ids) == [50256, 628]  # GPT-2's pair: the decoder maps it to SmolLM2's (2, 1116)
    # the measured sizing: one pass over max_steps x batch pairs; bf16 but for the fp32 check row
    assert (cfg.train.max_steps, cfg.data.max_train_samples, cfg.train.precision) == (250, 2000, "bf16")
    check = [*args, "variant=fp32"]
    cfg = resolve_cell(compose(config_name="config", overrides=[*check, f"paths.results_dir={tmp_path}"]), check)
    assert cfg.train.precision == "fp32" and cfg.train.learning_rate == 2e-4 and cfg.method.r == 4


def test_planner_does_not_import_the_runner(tmp_path):
    """The runner stands above the planner: the planner never imports repro.run,
    neither on import of any planner module nor in `python -m repro.plan` (run here with repro.run made unimportable)."""
    code = (
        "import repro.plan.grid, repro.plan.order, repro.plan.cost, repro.plan.report, sys; "
        "assert 'repro.run' not in sys.modules, sorted(m for m in sys.modules if m.startswith('repro'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = (
        "import runpy, sys; sys.modules['repro.run'] = None; "  # any `import repro.run` now raises ImportError
        "sys.argv = ['repro.plan', '+table=glue', 'model=roberta-base', 'method=lora', 'task=rte']; "
        "runpy.run_module('repro.plan', run_name='__main__')"
    )
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path / "results"), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-c", cli], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "jobs: " in proc.stdout and "estimated GPU-hours (V100)" in proc.stdout


def test_submitit_local_reports_each_job_as_it_ends(hydra_ctx, tmp_path):
    """submitit's launchers tell the sweeper about each job as it ends (launchers.py), not when the whole batch has:
    a job that ends first is reported first, while the other still runs. The sweep's submitit folder holds the jobs'
    files, and no folder literally named `%j`."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins

    from hydra_plugins.repro_table_sweeper import launchers
    from tests.sweep_jobs import wait_seed_seconds

    cfg = compose(
        config_name="config",
        overrides=["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}/sweep", f"paths.log_dir={tmp_path}"],
        return_hydra_config=True,
    )
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context, task_function=wait_seed_seconds, config=cfg
    )
    assert type(launcher).__name__ == "LocalLauncher" and isinstance(launcher, launchers.ReportingLauncher)
    ended = []
    launcher.on_job_end = lambda i, r: ended.append((i, r.return_value))
    returns = launcher.launch([["seed=12"], ["seed=0"]], initial_job_idx=0)  # the first job ends 12 s after the other
    assert [r.return_value for r in returns] == ["seed12", "seed0"]  # the launcher's return: in submission order
    assert ended == [(1, "seed0"), (0, "seed12")]  # the sweeper's callback: as they ended
    folders = {p.relative_to(tmp_path / "sweep").as_posix() for p in (tmp_path / "sweep").rglob("*") if p.is_dir()}
    assert folders == {".submitit", "0", "1"}, folders
