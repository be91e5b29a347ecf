"""The PEFT export (repro/export.py): every method PEFT represents is written as an adapter folder that
`PeftModel.from_pretrained` (peft 0.21, the oracle; test-only) loads onto the pretrained model with the cell's outputs;
the others are refused with one line, at the function and at the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf
from transformers import set_seed

from repro.errors import CellMismatch
from repro.export import export_peft, main
from repro.methods import apply_method
from repro.methods.checkpoint import save_trainable
from repro.models import load_model, load_tokenizer
from tests.conftest import compose_cfg
from tests.methods.conftest import DECODERS, batch, method, randomize_B, tiny

peft = pytest.importorskip("peft")


def cell(arch: str, m):
    return OmegaConf.create(
        {"method": OmegaConf.to_container(m), "model": {"name": f"tiny-{arch}", "hub_id": f"hub/tiny-{arch}"}}
    )


def trained(arch: str, m, seed: int = 3, **size):
    """The adapted tiny model with every trained tensor moved off its initial value: B (and AdaLoRA's A, E, with some
    λ pruned to 0), DoRA's magnitude, the task head."""
    base = tiny(arch, **size)
    model = apply_method(copy.deepcopy(base), m)
    randomize_B(model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_magnitude" in n:
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif ".lora_E" in n:
                p.copy_(torch.randn(p.shape, generator=g) * (torch.rand(p.shape, generator=g) > 0.4))
            elif ".lora_" in n and p.requires_grad and not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif p.requires_grad and ".lora_" not in n:  # the head
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return base, model.eval()


def logits(model, arch):
    with torch.no_grad():
        return model(input_ids=batch(arch)["input_ids"]).logits


EXPORTABLE = [
    ("roberta", "lora", {}),
    ("bert", "lora", {}),  # the head: classifier + bert.pooler
    ("deberta-v2", "lora", {}),
    ("roberta", "rslora", {"r": 4, "alpha": 16}),
    ("roberta", "lora", {"rslora": True, "r": 4, "alpha": 16}),  # rsLoRA under method=lora
    ("roberta", "pissa", {}),
    ("roberta", "lora", {"init": "pissa"}),
    ("roberta", "rslora", {"init": "pissa", "r": 4}),
    ("roberta", "dora", {}),
    ("roberta", "lora_all_linear", {"r": 2}),
    ("llama", "lora_all_linear", {"r": 2}),
    ("llama", "dora", {"targets": "all_linear"}),
    ("gpt2", "lora", {}),  # q and v inside the fused c_attn: one PEFT pair of rank 2r, B block-diagonal
    ("gpt2", "lora_all_linear", {"r": 2}),
    ("gpt2", "dora", {"targets": ["q", "v", "o"]}),
    ("gpt2", "pissa", {"r": 2}),
    ("roberta", "adalora", {"targets": ["q", "v"]}),
]


@pytest.mark.parametrize("arch,name,over", EXPORTABLE)
def test_export_loads_in_peft_with_the_cells_outputs(tmp_path, arch, name, over):
    m = method(name, **over)
    base, model = trained(arch, m)
    want = logits(model, arch)
    assert (want - logits(base, arch)).abs().max() > 1e-3  # the adapter changes the outputs: the test can fail
    out = export_peft(model, base, cell(arch, m), tmp_path / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    assert (logits(loaded, arch) - want).abs().max() <= 1e-5
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == f"hub/tiny-{arch}"
    if name != "adalora":
        assert config["use_rslora"] is bool(m.get("rslora", False))  # PEFT scales by alpha/√r only with it
        assert config["use_dora"] is (name == "dora")
        assert config["task_type"] == ("CAUSAL_LM" if arch in DECODERS else "SEQ_CLS")
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), tiny(arch).state_dict().values()))


@pytest.mark.parametrize(
    "arch,name", [("roberta", "ft"), ("roberta", "adapter_h"), ("roberta", "bitfit"), ("gpt2", "prefix_layer")]
)
def test_methods_peft_cannot_represent_are_refused(tmp_path, arch, name):
    m = method(name)
    model = apply_method(tiny(arch), m)
    with pytest.raises(CellMismatch, match=f"method={name}: PEFT has no format .*exportable methods: lora, rslora"):
        export_peft(model, tiny(arch), cell(arch, m), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _record(tmp_path, name: str, status: str = "ok", where: str = "results/seed0.json"):
    """A record and its checkpoint as the runner writes them, for a tiny-RoBERTa RTE cell (the base model's random
    weights from the cell's seed, as the runner and the export load it)."""
    cfg = compose_cfg(["+table=glue", "model=tiny-roberta", f"method={name}", "task=rte"], tmp_path)
    set_seed(cfg.seed)
    base = load_model(cfg.model, cfg.task, load_tokenizer(cfg.model, cfg.paths.data_dir))
    model = apply_method(copy.deepcopy(base), cfg.method)
    randomize_B(model, seed=1)
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trainable(model, path.with_suffix(".safetensors"), cfg)
    fields = {"status": status, "table": "glue", "model": "tiny-roberta", "method": name, "task": "rte", "seed": 0}
    path.write_text(json.dumps({**fields, "config": OmegaConf.to_container(cfg, resolve=True)}))
    return path, base, model.eval()


def test_command_exports_a_record(tmp_path, capsys):
    path, base, model = _record(tmp_path, "lora")
    assert main(["peft", str(path.parent), "--out-dir", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "seed0") in capsys.readouterr().out
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "out" / "seed0")).eval()
    x = {"input_ids": torch.tensor([[0, 11, 42, 7, 2]])}
    with torch.no_grad():
        assert (loaded(**x).logits - model(**x).logits).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "does not exist: give a record"),
        ("empty folder", "no records (seed*.json) under this folder"),
        ("not json", "not a readable record"),
        ("failed", "status 'failed'; only ok cells"),
        ("adapter", "method=adapter_h: PEFT has no format"),
        ("no weights", "seed0.safetensors is missing (weights are not committed): rerun the cell"),
    ],
)
def test_command_refuses_bad_input_with_one_line(tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    source = {"missing": tmp_path / "nope.json", "empty folder": tmp_path / "empty"}.get(case)
    if case == "not json":
        source = tmp_path / "seed0.json"
        source.write_text("{not json")
    elif source is None:
        source, _, _ = _record(
            tmp_path, "adapter_h" if case == "adapter" else "lora", "failed" if case == "failed" else "ok"
        )
        if case == "no weights":
            source.with_suffix(".safetensors").unlink()
    assert main(["peft", str(source), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_qlora_export_loads_onto_the_same_4bit_base(tmp_path):
    """QLoRA's adapter is a plain LoRA adapter; on the same NF4 layers it gives the cell's outputs."""
    pytest.importorskip("bitsandbytes")
    from repro.methods.qlora import QLoRALinear  # optional dependency (bitsandbytes): this test only

    m = method("qlora", r=2, alpha=4, targets=["q", "v"])
    base, model = trained("llama", m, hidden=64)  # bitsandbytes' CPU NF4 needs d_in a multiple of 64
    out = export_peft(model, base, cell("llama", m), tmp_path / "peft")
    quantized = copy.deepcopy(model)  # the cell's 4-bit base: its Linear4bit layers without the LoRA modules
    for name, mod in list(quantized.named_modules()):
        if isinstance(mod, QLoRALinear):
            parent, _, attr = name.rpartition(".")
            setattr(quantized.get_submodule(parent), attr, mod.base_layer)
    loaded = peft.PeftModel.from_pretrained(quantized, str(out)).eval()
    assert (logits(loaded, "llama") - logits(model, "llama")).abs().max() <= 1e-5


def test_a_folder_with_one_record_that_cannot_be_exported_writes_nothing(tmp_path, capsys):
    _record(tmp_path, "lora", where="results/lora/seed0.json")
    _record(tmp_path, "adapter_h", where="results/adapter_h/seed0.json")
    assert main(["peft", str(tmp_path / "results"), "--out-dir", str(tmp_path / "out")]) == 2
    assert "method=adapter_h: PEFT has no format" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
