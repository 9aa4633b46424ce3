"""Data: readers for text/TSV/CSV/JSONL and the benchmark files, sentence sources, corpus
building with de-dup and evaluation-split exclusion, seeded splits, and batching.

The data directory is resolved by :func:`attnkd.paths.data_dir` (config ``data.data_dir``,
then ``$ATTNKD_DATA_DIR``, then ``../shared/data``). Malformed input raises
:class:`attnkd.errors.DataError` naming file and line, or is counted with ``bad_rows="skip"``.
"""

from attnkd.data.benchmarks import (
    RTE_LABELS,
    LabeledPair,
    LabeledSentence,
    SentencePair,
    benchmark_file,
    read_mrpc,
    read_rte,
    read_sst2,
    read_stsb,
)
from attnkd.data.collate import (
    DynamicPaddingCollator,
    LengthGroupedBatches,
    TokenizedTexts,
    batches,
    token_lengths,
)
from attnkd.data.corpus import (
    Corpus,
    SourceCount,
    Split,
    build_corpus,
    normalize_sentence,
    split_validation,
)
from attnkd.data.lm import (
    HeldOutCopies,
    LMBatches,
    LMSplits,
    TokenStream,
    drop_held_out_copies,
    lm_texts,
    split_blocks,
    tokenize_lines,
    tokenize_stream,
)
from attnkd.data.overlap import ExclusionCount, Exclusions, sentence_key, shared_keys
from attnkd.data.readers import read_header, read_jsonl, read_table, read_text
from attnkd.data.rows import JsonRow, ReadResult, ReadStats, TableRow, TextRow, map_rows
from attnkd.data.sources import (
    SOURCES,
    held_out_sentences,
    known_sources,
    load_source,
    source_sentences,
)
from attnkd.data.text import (
    detokenize_wikitext,
    read_tinyshakespeare,
    read_wikitext2,
    split_tokenized_sentences,
)

__all__ = [
    "held_out_sentences",
    "shared_keys",
    "sentence_key",
    "Exclusions",
    "ExclusionCount",
    "tokenize_lines",
    "drop_held_out_copies",
    "TokenStream",
    "HeldOutCopies",
    "RTE_LABELS",
    "SOURCES",
    "Corpus",
    "DynamicPaddingCollator",
    "JsonRow",
    "LabeledPair",
    "LabeledSentence",
    "LMBatches",
    "LMSplits",
    "LengthGroupedBatches",
    "TokenizedTexts",
    "ReadResult",
    "ReadStats",
    "SentencePair",
    "SourceCount",
    "Split",
    "TableRow",
    "TextRow",
    "batches",
    "benchmark_file",
    "build_corpus",
    "detokenize_wikitext",
    "known_sources",
    "lm_texts",
    "load_source",
    "map_rows",
    "normalize_sentence",
    "read_header",
    "read_jsonl",
    "read_mrpc",
    "read_rte",
    "read_sst2",
    "read_stsb",
    "read_table",
    "read_text",
    "read_tinyshakespeare",
    "read_wikitext2",
    "source_sentences",
    "split_tokenized_sentences",
    "split_blocks",
    "split_validation",
    "token_lengths",
    "tokenize_stream",
]
