"""Tiny models, tokenizer and data shared by the integration tests (imported by conftest.py).

A tiny vocabulary and WordPiece tokenizer, tiny BERT/MPNet models built from configs here, and a
tiny benchmark data folder laid out like the shared one (stsb/sts-{train,dev}.csv,
sst2/train.tsv) using only the vocabulary's words. CPU and small: 4 layers, width 32, 4 heads.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ADJECTIVES = ["big", "small", "red", "blue", "happy", "sad", "old", "young"]
NOUNS = ["man", "woman", "dog", "cat", "child", "bird", "horse", "girl"]
VERBS = ["playing", "eating", "running", "sitting", "walking", "jumping"]
PLACES = ["park", "street", "water", "garden", "kitchen", "field"]
OTHER = ["a", "the", "is", "are", "on", "in", "with", "and", "very", "not"]
OTHER += ["movie", "film", "great", "boring", "fun", "good", "bad"]
OTHER += ["guitar", "piano", "ball", "food", ".", ","]
WORDS = ADJECTIVES + NOUNS + VERBS + PLACES + OTHER
VOCAB = SPECIALS + WORDS

WIDTH, LAYERS, HEADS, FFN = 32, 4, 4, 64


def bert_config(**kw):
    """A tiny BertConfig (vocabulary of :data:`VOCAB`); ``kw`` overrides any field."""
    from transformers import BertConfig

    base = dict(vocab_size=len(VOCAB), hidden_size=WIDTH, num_hidden_layers=LAYERS)
    base.update(num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=128)
    base.update(kw)
    return BertConfig(**base)


def mpnet_config(**kw):
    """A tiny MPNetConfig of the same shape as :func:`bert_config`."""
    from transformers import MPNetConfig

    base = dict(vocab_size=len(VOCAB), hidden_size=WIDTH, num_hidden_layers=LAYERS)
    base.update(num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=130)
    base.update(kw)
    return MPNetConfig(**base)


def tiny_bert(seed: int = 0, attn: str = "sdpa", **kw):
    """A bare, seeded tiny BertModel (no pooler), in eval mode."""
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(bert_config(**kw), add_pooling_layer=False)
    model.set_attn_implementation(attn)
    return model.eval()


def tiny_mpnet(seed: int = 0, **kw):
    """A bare, seeded tiny MPNetModel (no pooler, eager attention), in eval mode."""
    from transformers import MPNetModel

    torch.manual_seed(seed)
    return MPNetModel(mpnet_config(**kw), add_pooling_layer=False).eval()


def make_tokenizer(vocab_file: Path):
    """A WordPiece BERT tokenizer over the words of ``vocab_file`` (one token a line)."""
    from transformers import BertTokenizerFast

    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def make_sentence(rng: random.Random) -> str:
    adj, noun, verb, place = (rng.choice(x) for x in (ADJECTIVES, NOUNS, VERBS, PLACES))
    det = rng.choice(["a", "the"])
    tail = rng.choice(["", f" with the {rng.choice(['ball', 'guitar', 'piano', 'food'])}"])
    return f"{det} {adj} {noun} is {verb} in the {place}{tail} ."


def _stsb_rows(rng: random.Random, n: int, start: int) -> list[str]:
    rows = []
    for i in range(n):
        s1 = make_sentence(rng)
        s2 = s1 if i % 5 == 0 else make_sentence(rng)
        score = 5.0 if s1 == s2 else rng.uniform(0.0, 4.8)
        rows.append(f"main-captions\tMSRvid\t2012test\t{start + i:04d}\t{score:.3f}\t{s1}\t{s2}")
    return rows


def write_data_dir(root: Path, seed: int = 0) -> Path:
    """Write stsb/sts-train.csv (40 pairs), stsb/sts-dev.csv (24 pairs), sst2/train.tsv."""
    rng = random.Random(seed)
    (root / "stsb").mkdir(parents=True, exist_ok=True)
    (root / "sst2").mkdir(parents=True, exist_ok=True)
    (root / "stsb" / "sts-train.csv").write_text("\n".join(_stsb_rows(rng, 40, 0)) + "\n")
    (root / "stsb" / "sts-dev.csv").write_text("\n".join(_stsb_rows(rng, 24, 100)) + "\n")
    reviews = []
    for i in range(30):
        judgement = rng.choice(["great", "boring", "fun", "good", "bad"])
        extra = rng.choice(["", "very ", "not "])
        noun = rng.choice(["movie", "film"])
        reviews.append(f"a {extra}{judgement} {noun} with a {rng.choice(NOUNS)} \t{i % 2}")
    (root / "sst2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(reviews) + "\n")
    return root


def fast_overrides(teacher_dir: Path, data_dir: Path, output_dir: Path) -> list[str]:
    """``key=value`` overrides for a 6-step run of the tiny teacher on the tiny data. They pin
    everything the tests rely on, since the CLI starts from the built-in default recipe."""
    return [
        "name=tiny",
        f"output_dir={output_dir}",
        f"teacher.name={teacher_dir}",
        "student.layers=[0, 3]",
        "losses=[{name: relation}]",
        f"data.data_dir={data_dir}",
        "data.train_sources=[stsb:train, sst2:train]",
        "data.max_length=32",
        "train.max_steps=6",
        "train.max_minutes=null",
        "train.eval_every=3",
        "train.batch_size=4",
        "train.log_every=2",
        "train.lr=1e-3",
        "train.warmup_ratio=0.06",
        "train.freeze_embeddings=false",
    ]


# ---------------------------------------------------------------- tiny decoders (Llama family)

DEC_VOCAB, DEC_LAYERS, DEC_HEADS, DEC_KV_HEADS = 50, 3, 4, 2


def llama_config(**kw):
    """A tiny LlamaConfig: width 32, 3 layers, 4 query / 2 key-value heads (GQA), vocab 50."""
    from transformers import LlamaConfig

    base = dict(vocab_size=DEC_VOCAB, hidden_size=WIDTH, num_hidden_layers=DEC_LAYERS)
    base.update(num_attention_heads=DEC_HEADS, num_key_value_heads=DEC_KV_HEADS)
    base.update(intermediate_size=FFN, max_position_embeddings=64, rope_theta=100.0)
    base.update(pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    base.update(initializer_range=0.2)  # 10x the default: peaked, not near-uniform, attention
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(seed: int = 0, attn: str = "sdpa", **kw):
    """A seeded tiny LlamaForCausalLM (float32), in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**kw))
    model.set_attn_implementation(attn)
    return model.eval()


def decoder_batch(padding: str = "right", seed: int = 0) -> dict[str, torch.Tensor]:
    """Three random token rows of lengths 7, 4, 6 in a (3, 7) batch, padded on ``padding``
    ('right', 'left') with id 0, or three full rows of 7 ('none')."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, DEC_VOCAB, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    if padding != "none":
        for row, n in enumerate((7, 4, 6)):
            pad = slice(n, None) if padding == "right" else slice(0, 7 - n)
            mask[row, pad] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def make_decoder_tokenizer(words: list[str], pad: bool = False):
    """A whitespace word-level fast tokenizer over ``<unk> <s> </s> + words`` (no pad token
    unless ``pad``), like many decoder tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>", *(["<pad>"] if pad else []), *words]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **extra
    )


def save_tiny_llama_folder(folder: Path) -> Path:
    """A local model folder: ``tiny_llama(seed=0)`` sized to the word-level decoder tokenizer
    over ``WORDS``, saved with that tokenizer."""
    tok = make_decoder_tokenizer(WORDS)
    tiny_llama(seed=0, vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_story(path: Path, seed: int, lines: int = 300) -> Path:
    """A text file of ``lines`` random sentences over ``WORDS`` (a ``file:`` data source)."""
    rng = random.Random(seed)
    path.write_text("\n".join(make_sentence(rng) for _ in range(lines)) + "\n", encoding="utf-8")
    return path


def masked_ids_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """3 random rows of 20 token ids (from id 5 up), the second with its last 6 positions padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -6:] = 0
    return {"input_ids": ids, "attention_mask": mask}
