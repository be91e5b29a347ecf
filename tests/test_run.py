"""The shared runner, end to end on tiny models: records, skips, and bad input that writes nothing."""

import json
import os
import subprocess
import sys

import pytest

from repro import PROJECT_ROOT
from repro.cell import resolve_cell
from repro.errors import DataFileMissing, ModelUnavailable
from repro.records import record_path
from repro.run import run_cell
from repro.schema import ConfigError

TINY_CELL = [
    "+table=glue",
    "model=tiny-roberta",
    "method=lora",
    "task=rte",
    "train.max_steps=20",
    "data.max_eval_samples=64",
]


def cell(compose_config, overrides):
    return resolve_cell(compose_config(overrides), overrides)


def test_tiny_cell_writes_an_ok_record_then_skips(compose_config, data_dir):
    cfg = cell(compose_config, TINY_CELL)
    record = run_cell(cfg)
    saved = json.loads(record_path(cfg).read_text())
    assert saved["status"] == "ok" and saved == json.loads(json.dumps(record, default=str))
    assert 0 < saved["trainable_params"] < saved["total_params"]
    assert saved["adapter_params"] == 2 * 2 * 8 * 32 * 2  # q,v x 2 layers x (A + B) with r=8, d=32
    assert 0.0 <= saved["metrics"]["accuracy"] <= 1.0
    assert saved["steps"] == 20 and saved["provenance"]["torch"] and saved["config"]["seed"] == 0
    assert saved["peak_rss_scope"] == "cell" and saved["peak_rss_mb"] > 0  # this cell's peak, not the process's
    assert isinstance(saved["process_cell_index"], int) and saved["process_cell_index"] >= 0  # cells run before it here
    assert 0 < saved["train_runtime_s"] <= saved["wall_s"]
    assert record_path(cfg).with_suffix(".safetensors").exists()
    assert not (record_path(cfg).parent / "checkpoints" / "seed0").exists()
    again = run_cell(cell(compose_config, TINY_CELL))
    assert again["wall_s"] == saved["wall_s"]  # the same record: skipped, not retrained


def test_command_line_beats_table_settings(compose_config):
    cfg = cell(
        compose_config, ["+table=glue", "model=roberta-base", "method=lora", "task=rte", "train.learning_rate=1e-3"]
    )
    assert cfg.train.learning_rate == 1e-3  # command line
    assert cfg.train.num_train_epochs == 80  # the row's RTE setting (Table 9)
    assert cfg.train.global_batch_size == 256  # 32 per GPU x 8 GPUs
    assert cfg.method.alpha == 16 and cfg.method.r == 8


def written_outside_logs(root):
    return [p for p in root.rglob("*") if p.is_file() and "logs" not in p.relative_to(root).parts]


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (["+table=glue", "model=tiny-roberta", "method=lora", "task=mnli"], DataFileMissing, ["glue/MNLI/train.tsv"]),
        (
            # CoLA: the paper's RoBERTa RTE starts from the MNLI cell's weights, a missing file refused before the model
            ["+table=glue", "model=roberta-base", "method=lora", "task=cola", "allow_cpu=true"],
            ModelUnavailable,
            ["model=minilm", "tiny-roberta"],
        ),
        (["model=tiny-gpt2", "method=lora", "task=rte"], ConfigError, ["encoder"]),
        (
            ["+table=glue", "model=tiny-roberta", "method=lora", "task=rte", "method.r=0"],
            ConfigError,
            ["method.r=0", "rank"],
        ),
        (["+table=glue", "model=gpt2-medium", "method=lora", "task=rte"], ConfigError, ["encoder"]),
    ],
)
def test_bad_input_raises_and_writes_nothing(compose_config, data_dir, tmp_path, overrides, error, words):
    with pytest.raises(error) as err:
        run_cell(cell(compose_config, overrides))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert written_outside_logs(tmp_path) == []  # no record, no lock, no checkpoint folder


def test_cli_unknown_model_lists_valid_ones_and_writes_nothing(tmp_path):
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", "+table=glue", "model=nope", "method=lora", "task=rte"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "roberta-base" in proc.stderr and "tiny-roberta" in proc.stderr and "minilm" in proc.stderr
    assert not list(tmp_path.rglob("*.json"))


def test_cli_bad_input_exits_2_with_one_line(tmp_path, data_dir):
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", "+table=glue", "model=tiny-roberta", "task=qqp"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "glue/QQP/train.tsv" in proc.stderr
    assert written_outside_logs(tmp_path) == []


def test_diverged_cell_is_recorded_as_failed(compose_config, data_dir):
    overrides = [
        "model=tiny-roberta",
        "method=ft",
        "task=rte",
        "train.max_steps=6",
        "train.logging_steps=1",
        "train.max_grad_norm=0",
        "data.max_eval_samples=16",
    ]
    diverging = cell(compose_config, overrides)
    # the schema refuses a learning rate above 1 as bad input: a step this large is set past it, to make the loss blow up
    diverging.train.learning_rate = 1e30
    record = run_cell(diverging)
    assert record["status"] == "failed" and "diverged" in record["error"]
    assert json.loads(record_path(cell(compose_config, overrides)).read_text())["status"] == "failed"


@pytest.mark.parametrize("table", ["+table=e2e_cpu", None])
def test_cli_bitfit_on_smollm2_refused_in_one_line(tmp_path, data_dir, table):
    """SmolLM2 (Llama) has no biases: BitFit is refused before any model is loaded, in one line, exit 2, nothing written."""
    env = {**os.environ, "REPRO_RESULTS_DIR": str(tmp_path), "REPRO_LOG_DIR": str(tmp_path / "logs")}
    args = [a for a in (table, "model=smollm2-135m", "method=bitfit", "task=e2e") if a]
    proc = subprocess.run(
        [sys.executable, "-m", "repro.run", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: method=bitfit: model smollm2-135m has no bias parameters (Llama: attention_bias=False, "
        "mlp_bias=False); BitFit trains biases only"
    ], proc.stderr
    assert written_outside_logs(tmp_path) == []


def test_a_set_up_error_that_is_not_a_repro_error_is_bad_input_in_one_line(
    compose_config, data_dir, tmp_path, monkeypatch
):
    """The boundary: before the cell's lock every error is bad input (ReproError, exit 2, nothing written), also one
    that a library raised on a malformed input (here a KeyError from the data loader)."""
    import repro.run as run
    from repro.tasks import classification

    def malformed(cfg, tokenizer):
        raise KeyError("sentence1")

    monkeypatch.setattr(classification, "load_data", malformed)
    monkeypatch.delenv("REPRO_DEBUG", raising=False)
    with pytest.raises(run.SetupFailed) as err:
        run_cell(cell(compose_config, TINY_CELL))
    assert str(err.value) == "loading the data of task=rte failed: KeyError: 'sentence1'"
    assert written_outside_logs(tmp_path) == []
    monkeypatch.setenv("REPRO_DEBUG", "1")  # the debug flag: the original error, with its traceback
    with pytest.raises(KeyError):
        run_cell(cell(compose_config, TINY_CELL))
