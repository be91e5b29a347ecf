"""Formatting and encoding as microsoft/LoRA examples/NLG (format_converting_*.py, gpt2_encode.py, FT_Dataset)."""

from __future__ import annotations

import json

import pytest

from repro.data.nlg import (
    SEEN_CATEGORIES_2017,
    e2e_mr_from_hub,
    encode_example,
    prompt_ids,
    read_dart,
    read_e2e,
    read_webnlg,
)
from repro.decode import group_references
from repro.errors import DataFileMissing
from repro.models import load_tokenizer
from repro.tasks.generation import load_examples


@pytest.fixture(scope="module")
def tok(data_dir):
    from omegaconf import OmegaConf

    return load_tokenizer(
        OmegaConf.create({"source": "tiny", "model_type": "gpt2", "name": "tiny-gpt2", "tokenizer_hub_id": "gpt2"}),
        data_dir,
    )


def test_e2e_lines(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("name : Blue Spice | Type : pub||Blue Spice is a pub . \nname : Blue Spice | Type : pub||A pub . \n")
    ex = read_e2e(f)
    assert ex == [
        {"context": "name : Blue Spice | Type : pub", "completion": "Blue Spice is a pub ."},
        {"context": "name : Blue Spice | Type : pub", "completion": "A pub ."},
    ]
    groups = group_references(ex)
    assert len(groups) == 1 and groups[0]["references"] == ["Blue Spice is a pub .", "A pub ."]


def test_real_e2e_counts(data_dir, compose_config):
    cfg = compose_config(["task=e2e", "model=tiny-gpt2", "method=ft"])
    test = load_examples(cfg.task, "test", data_dir)
    assert len(test) == 4693 and len(group_references(test)) == 630  # the paper's test set: 630 MRs
    assert len(group_references(load_examples(cfg.task, "dev", data_dir))) == 547


def test_webnlg_format(tmp_path):
    data = {
        "entries": [
            {
                "1": {
                    "category": "Airport",
                    "modifiedtripleset": [
                        {"subject": "A", "property": "cityServed", "object": "B"},
                        {"subject": "A", "property": "elevation", "object": "5"},
                    ],
                    "lexicalisations": [{"comment": "good", "lex": "A serves B."}, {"comment": "bad", "lex": "x"}],
                }
            },
            {
                "2": {
                    "category": "Artist",
                    "modifiedtripleset": [{"subject": "C", "property": "genre", "object": "D"}],
                    "lexicalisations": [{"comment": "good", "lex": "C plays D."}],
                }
            },
        ]
    }
    f = tmp_path / "w.json"
    f.write_text(json.dumps(data))
    ex = read_webnlg(f)
    assert [e["context"] for e in ex] == ["A : cityServed : B | A : elevation : 5", "C : genre : D"]
    assert [e["seen"] for e in ex] == [True, False]


def test_seen_categories_and_real_webnlg(data_dir, compose_config):
    assert len(SEEN_CATEGORIES_2017) == 10
    cfg = compose_config(["task=webnlg", "model=tiny-gpt2", "method=ft"])
    test = load_examples(cfg.task, "test", data_dir)
    assert len(test) == 4928  # Table 14's test size ("good" lexicalisations)
    cats = {e["category"] for e in test if not e["seen"]}
    assert cats == {"Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"}  # the 5 unseen


def test_dart_format_lowercases_property(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(
        json.dumps(
            [{"tripleset": [["X", "BIRTH_PLACE", "Y"]], "annotations": [{"source": "s", "text": "X was born in Y."}]}]
        )
    )
    assert read_dart(f) == [{"context": "X : birth_place : Y", "completion": "X was born in Y."}]


def test_dart_train_missing_offline(data_dir, compose_config):
    cfg = compose_config(["task=dart", "model=tiny-gpt2", "method=ft"])
    with pytest.raises(DataFileMissing, match=r"dart/train.json.*Yale-LILY/dart"):
        load_examples(cfg.task, "train", data_dir)
    assert len(load_examples(cfg.task, "test", data_dir)) == 12552


def test_encoding_and_mask(tok):
    enc = encode_example(tok, "name : Aromi", "Aromi is nice .", 512)
    ctx = tok("name : Aromi", add_special_tokens=False)["input_ids"]
    comp = tok(" Aromi is nice .", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == ctx + [50256] + comp + [50256]
    assert enc["labels"] == [-100] * (len(ctx) + 1) + comp + [50256]  # loss on the completion (and its end) only
    short = encode_example(tok, "name : Aromi", "Aromi is nice .", 4)
    assert short["input_ids"] == enc["input_ids"][:4] and short["labels"] == enc["labels"][:4]
    assert prompt_ids(tok, "name : Aromi", 2) == (ctx + [50256])[-2:]  # the query keeps its last tokens


def test_bpe_matches_gpt2_encoder(tok):
    # GPT-2's byte-level BPE: a leading space is part of the token, pre-tokenized text keeps " ." as its own token
    assert tok.convert_ids_to_tokens(tok(" Blue Spice .", add_special_tokens=False)["input_ids"]) == [
        "ĠBlue",
        "ĠSpice",
        "Ġ.",
    ]
    assert tok("\n\n", add_special_tokens=False)["input_ids"] == [628]


def test_hub_mr_conversion():
    assert (
        e2e_mr_from_hub("name[The Eagle], eatType[coffee shop], priceRange[cheap], familyFriendly[yes]")
        == "name : The Eagle | Type : coffee shop | price : cheap | family friendly : yes"
    )
