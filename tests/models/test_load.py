"""One loading preamble (``load_pretrained``) serves the encoder, causal-LM and
sequence-classification loaders: each gets the class its kind asks for, the family rule of its
kind, and one error naming the model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from int_helpers import VOCAB, make_tokenizer, save_tiny_llama_folder, tiny_bert  # noqa: E402

from attnkd.errors import AttnkdError  # noqa: E402
from attnkd.models.load import load_causal_lm, load_encoder, load_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("load") / "bert"
    vocab = folder.parent / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tiny_bert(seed=0).save_pretrained(folder)
    make_tokenizer(vocab).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama_folder(tmp_path_factory.mktemp("load") / "llama")


def test_each_kind_gets_its_class_and_the_same_weights(bert_dir):
    from attnkd.tasks.sequence_classification import load as load_cls

    enc, cls = load_encoder(str(bert_dir)), load_cls(str(bert_dir), tokenizer=False)
    assert type(enc.model).__name__ == "BertModel" and enc.model.pooler is None
    assert type(cls.model).__name__ == "BertForSequenceClassification"
    assert cls.model.bert.pooler is not None and cls.tokenizer is None
    assert enc.tokenizer is not None and enc.source == cls.source == "local"
    a = enc.model.embeddings.word_embeddings.weight
    b = cls.model.bert.embeddings.word_embeddings.weight
    assert (a == b).all() and enc.geometry == cls.geometry


def test_family_rules_name_the_model(bert_dir, llama_dir):
    from attnkd.tasks.sequence_classification import load as load_cls

    with pytest.raises(AttnkdError, match="as a causal LM: 'bert' is an encoder family"):
        load_causal_lm(str(bert_dir))
    with pytest.raises(AttnkdError, match="is a decoder; sequence_classification needs"):
        load_cls(str(llama_dir))
    assert load_causal_lm(str(llama_dir)).tokenizer.pad_token is not None
    with pytest.raises(AttnkdError, match="missing. does not exist"):
        load_pretrained(str(bert_dir.parent / "missing"), "encoder")


def test_the_task_loader_has_no_preamble_of_its_own():
    text = Path(sys.modules["attnkd.models.load"].__file__).parents[1] / "tasks"
    source = (text / "sequence_classification.py").read_text(encoding="utf-8")
    assert "from_pretrained" not in source and "resolve_model_path" not in source
