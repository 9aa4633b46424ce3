"""Convert softmax attention into cheaper attention with weight inheritance (METHODS.md section 5).

``convert_attention(model, ConversionSpec(kind="hybrid", window=64))`` swaps the attention of
chosen layers of a copy of a BERT or Llama-family model (kinds: linear, window, hybrid, shared,
sparse; ``convert_to_mla`` for GQA -> MLA); ``save_converted`` / ``load_converted``
write and read it (safetensors + ``conversion.json``) without any training code. Stage-1
attention transfer lives in :mod:`attnkd.convert.transfer`, stage-3 LoRA adapters in
:mod:`attnkd.convert.lora` (both imported on demand).
"""

from attnkd.convert._band import banded_attention
from attnkd.convert.hybrid import HybridAttention
from attnkd.convert.io import load_converted, save_converted
from attnkd.convert.linear import HedgehogFeatureMap, LinearAttention
from attnkd.convert.mixer import Mixer
from attnkd.convert.mla import LatentKVAttention, LatentState, convert_to_mla
from attnkd.convert.shared import SharedAttention, SharedSlot, SourceAttention
from attnkd.convert.sparse import SparseTopKAttention, topk_attention
from attnkd.convert.state import MixerState
from attnkd.convert.swap import (
    KINDS,
    ConversionSpec,
    ConvertedAttention,
    convert_attention,
    converted_modules,
    mixer_parameters,
)
from attnkd.convert.window import WindowAttention

__all__ = [
    "KINDS",
    "ConversionSpec",
    "ConvertedAttention",
    "HedgehogFeatureMap",
    "HybridAttention",
    "LatentKVAttention",
    "LatentState",
    "LinearAttention",
    "Mixer",
    "MixerState",
    "SharedAttention",
    "SharedSlot",
    "SourceAttention",
    "SparseTopKAttention",
    "WindowAttention",
    "banded_attention",
    "convert_attention",
    "convert_to_mla",
    "converted_modules",
    "load_converted",
    "mixer_parameters",
    "save_converted",
    "topk_attention",
]
