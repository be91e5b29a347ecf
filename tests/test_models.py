"""Loading backbones and tokenizers (repro/models.py) and the dependencies that loading needs."""

from __future__ import annotations

import io
import json
import sys
import tomllib
from pathlib import Path

import pytest

from repro import CONF_DIR
from repro.errors import ModelUnavailable
from repro.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
LINES = [
    "the quick brown fox jumps over the lazy dog",
    "a man is playing a guitar",
    "two dogs run in the park",
    "the cat sat on the mat",
    "glue is a benchmark of nine tasks",
    "low rank adaptation of large language models",
]


def spm_only_deberta_folder(folder: Path) -> Path:
    """A DeBERTa-v2 tokenizer folder as microsoft/deberta-v2-xxlarge ships it: spm.model and tokenizer_config.json,
    no tokenizer.json. The SentencePiece model is trained here on a few lines, with DeBERTa's special-token ids
    ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES * 5),
        model_writer=model,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True)
    (folder / "spm.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "vocab_type": "spm"})
    )
    return folder


def deberta_cfg(folder: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / "model" / "deberta-v2-xxlarge.yaml")
    cfg.hub_id = str(folder)  # a local snapshot of the hub folder: loads offline
    return cfg


def test_sentencepiece_is_a_pinned_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("sentencepiece==") for d in deps), deps


def test_sentencepiece_only_deberta_tokenizer_loads(tmp_path, monkeypatch):
    """Issue 16 item 5: DeBERTa-v2 XXL's tokenizer is only spm.model; without sentencepiece transformers 5 falls back
    to tiktoken and raises. Loaded through our loader, offline, from a local folder."""
    pytest.importorskip("sentencepiece", reason="a dependency in pyproject.toml: pip install -e .")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = spm_only_deberta_folder(tmp_path / "deberta-v2-xxlarge")
    tok = load_tokenizer(deberta_cfg(folder), None)
    assert type(tok).__name__ == "DebertaV2Tokenizer"
    assert [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    enc = tok("the cat sat", "a dog")
    ids = enc["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and ids.count(tok.sep_token_id) == 2
    assert tok.decode(tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]) == "the cat sat on the mat"


def test_missing_sentencepiece_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("sentencepiece")
    folder = spm_only_deberta_folder(tmp_path / "deberta-v2-xxlarge")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed
    with pytest.raises(ModelUnavailable, match=r"pip install sentencepiece=="):
        load_tokenizer(deberta_cfg(folder), None)
