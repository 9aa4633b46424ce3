"""Convert a BERT encoder exported to ONNX back into a Hugging Face ``BertModel`` folder.

Built for exports of sentence-transformers models (e.g. the published paraphrase-MiniLM-L3-v2)
made by ``torch.onnx.export``: bias, embedding and LayerNorm initializers keep their PyTorch
names (``model.0.auto_model.<param>``), while every ``nn.Linear`` weight becomes an anonymous
``onnx::MatMul_<k>`` initializer of shape ``(in, out)``. Those are matched to layers through the
name of the MatMul node that consumes them (``.../encoder/layer.L/attention/self/query/MatMul``)
and transposed back to PyTorch's ``(out, in)``. The config (layers, width, heads, FFN width,
vocabulary, positions, LayerNorm epsilon) is read from the graph; the conversion is strict:
every ``BertModel(add_pooling_layer=False)`` parameter must be filled exactly once and any
initializer left over is an error. ``onnx`` and ``onnxruntime`` are imported lazily.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from attnkd.atomic import atomic_files
from attnkd.errors import AttnkdError

if TYPE_CHECKING:
    from transformers import BertConfig

# Prefixes under which exporters place the BERT parameters (sentence-transformers, BertFor*).
_PREFIXES = ("model.0.auto_model.", "0.auto_model.", "auto_model.", "bert.", "")
# Buffers some exporters keep as initializers; they are not parameters and are safe to drop.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# `.../encoder/layer.3/attention/self/query/MatMul` -> (3, "attention/self/query").
_MATMUL_NAME = re.compile(
    r"encoder/layer\.(\d+)/"
    r"(attention/self/query|attention/self/key|attention/self/value|attention/output/dense"
    r"|intermediate/dense|output/dense)/MatMul(?:_\d+)?$"
)
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_SENTENCES = (
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation transfers what a large model knows to a small one.",
    "It rained all day, so the match was postponed until next week.",
    "Where is the nearest train station?",
    "Attention maps show which tokens each head looks at.",
    "She sold her old bicycle and bought a second-hand piano with the money.",
    "ok",
)


@dataclass
class OnnxBert:
    """A ``BertConfig`` and a complete ``BertModel`` state dict read from an ONNX graph."""

    config: BertConfig
    state_dict: dict[str, torch.Tensor]


def _load_graph(onnx_path: str | os.PathLike):
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - optional dependency
        raise AttnkdError("converting an ONNX model needs `pip install onnx`") from err
    path = Path(onnx_path)
    if not path.is_file():
        raise AttnkdError(f"ONNX file not found: {path}")
    return onnx.load(str(path)).graph


def _strip_prefix(name: str) -> str | None:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if rest.startswith(("embeddings.", "encoder.")):
                return rest
    return None


def _scalar_constants(graph) -> dict[str, float]:
    """Outputs of ``Constant`` nodes (and scalar initializers) that hold one float value."""
    from onnx import numpy_helper

    out: dict[str, float] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            if arr.size == 1 and arr.dtype.kind == "f":
                out[node.output[0]] = float(arr.reshape(()))
    for init in graph.initializer:
        if len(init.dims) == 0 or list(init.dims) == [1]:
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind == "f":
                out[init.name] = float(arr.reshape(()))
    return out


def _head_dim_from_graph(graph) -> int | None:
    """Per-head width from the attention score scaling ``/ sqrt(d)`` (or ``* 1/sqrt(d)``)."""
    scalars = _scalar_constants(graph)
    for node in graph.node:
        if "attention/self/" not in node.name or node.op_type not in ("Div", "Mul"):
            continue
        # The scaling applies to the q.k^T scores, i.e. to the output of attention/self/MatMul.
        if not node.input[0].endswith("attention/self/MatMul_output_0"):
            continue
        c = scalars.get(node.input[1])
        if c is None or c <= 0:
            continue
        d = c * c if node.op_type == "Div" else 1.0 / (c * c)
        if abs(d - round(d)) < 1e-3 * max(d, 1.0):
            return round(d)
    return None


def _layer_norm_eps(graph) -> float:
    eps = set()
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            for attr in node.attribute:
                if attr.name == "epsilon":
                    # Stored as float32: 1e-12 comes back as 9.99999996e-13; keep the short form.
                    eps.add(float(str(np.float32(attr.f))))
    if len(eps) > 1:
        raise AttnkdError(f"ONNX graph uses several LayerNorm epsilons {sorted(eps)}")
    return eps.pop() if eps else 1e-12


def _hidden_act(graph) -> str:
    ops = {node.op_type for node in graph.node}
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_new"
    if "Gelu" in ops:
        return "gelu"
    raise AttnkdError("cannot tell the FFN activation of the ONNX graph (no Erf, Tanh or Gelu)")


def _collect_weights(graph) -> dict[str, np.ndarray]:
    """Map every initializer to its ``BertModel`` parameter name; fail on anything left over."""
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weights = [name for name in node.input if name in inits]
        if not weights:
            continue  # activation x activation (q.k^T, probs.v)
        match = _MATMUL_NAME.search(node.name)
        if match is None or len(weights) != 1:
            raise AttnkdError(f"MatMul node '{node.name}' has a weight but no known BERT role")
        if weights[0] in used:
            raise AttnkdError(f"initializer '{weights[0]}' is used by two MatMul nodes")
        layer, role = match.groups()
        key = f"encoder.layer.{layer}.{role.replace('/', '.')}.weight"
        if key in out:
            raise AttnkdError(f"two MatMul weights map to '{key}'")
        out[key] = numpy_helper.to_array(inits[weights[0]]).T.copy()  # (in, out) -> (out, in)
        used.add(weights[0])
    for name, init in inits.items():
        if name in used:
            continue
        key = _strip_prefix(name)
        if key is None or _is_matmul_weight(name):
            if _is_graph_constant(init):
                continue  # axes, shapes and scalars lifted out of the graph
            raise AttnkdError(f"unknown ONNX initializer '{name}' with shape {list(init.dims)}")
        if key in _BUFFERS:
            continue
        if key in out:
            raise AttnkdError(f"two initializers map to '{key}'")
        out[key] = numpy_helper.to_array(init).copy()
    return out


def _is_matmul_weight(name: str) -> bool:
    return name.startswith("onnx::MatMul")


def _is_graph_constant(init) -> bool:
    """Unnamed integer or scalar helpers that torch.onnx.export lifts to initializers."""
    from onnx import TensorProto

    if not init.name.startswith("onnx::") or _is_matmul_weight(init.name):
        return False
    integer = init.data_type in (TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL)
    return integer or math.prod(init.dims) <= 1


def _config_from_weights(
    weights: dict[str, np.ndarray], graph, num_heads: int | None
) -> BertConfig:
    from transformers import BertConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in weights:
            raise AttnkdError(f"ONNX graph has no tensor for '{key}'")
        return tuple(weights[key].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer.")}
    if not layers or layers != set(range(max(layers) + 1)):
        raise AttnkdError(f"ONNX encoder layers are not 0..L-1: {sorted(layers)}")
    head_dim = _head_dim_from_graph(graph)
    if head_dim is not None:
        if hidden % head_dim:
            raise AttnkdError(f"hidden size {hidden} is not a multiple of head width {head_dim}")
        if num_heads is not None and num_heads * head_dim != hidden:
            raise AttnkdError(
                f"num_heads={num_heads} disagrees with the graph's head width {head_dim} "
                f"(hidden {hidden} -> {hidden // head_dim} heads)"
            )
        num_heads = hidden // head_dim
    elif num_heads is None:
        raise AttnkdError(
            "cannot infer the number of attention heads from the graph; pass num_heads"
        )
    if hidden % num_heads:
        raise AttnkdError(f"hidden size {hidden} is not divisible by num_heads={num_heads}")
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=num_heads,
        intermediate_size=shape("encoder.layer.0.intermediate.dense.bias")[0],
        max_position_embeddings=shape("embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
        layer_norm_eps=_layer_norm_eps(graph),
        hidden_act=_hidden_act(graph),
        architectures=["BertModel"],
    )


def read_onnx_bert(onnx_path: str | os.PathLike, num_heads: int | None = None) -> OnnxBert:
    """Read config and a full ``BertModel(add_pooling_layer=False)`` state dict from ONNX.

    ``num_heads`` is needed only when the graph has no readable attention scaling constant;
    when both exist they must agree. Raises ``AttnkdError`` on any missing or unknown tensor.
    """
    from transformers import BertModel

    graph = _load_graph(onnx_path)
    weights = _collect_weights(graph)
    config = _config_from_weights(weights, graph, num_heads)
    with torch.device("meta"):  # names and shapes only, no allocation
        expected = BertModel(config, add_pooling_layer=False).state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise AttnkdError(f"ONNX weights do not match BertModel: missing {missing}, unused {extra}")
    state: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        if tuple(ref.shape) != weights[key].shape:
            raise AttnkdError(
                f"'{key}': ONNX shape {weights[key].shape} != BertModel shape {tuple(ref.shape)}"
            )
        state[key] = torch.from_numpy(weights[key]).to(ref.dtype)
    return OnnxBert(config=config, state_dict=state)


def convert_onnx_bert(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer_source: str | os.PathLike | None = None,
    num_heads: int | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (and tokenizer files) to ``out_dir``.

    ``tokenizer_source`` is a folder whose tokenizer files (vocab.txt, tokenizer.json, ...)
    are copied alongside, since ONNX exports ship none. Returns ``out_dir``.
    """
    from transformers import BertModel

    onnx_bert = read_onnx_bert(onnx_path, num_heads=num_heads)
    model = BertModel(onnx_bert.config, add_pooling_layer=False)
    model.load_state_dict(onnx_bert.state_dict, strict=True)
    out = Path(out_dir)
    with atomic_files(out) as tmp:  # each file replaced whole; others in out_dir kept
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer_source is not None:
            src = Path(tokenizer_source)
            copied = [f for f in _TOKENIZER_FILES if (src / f).is_file()]
            if "vocab.txt" not in copied and "tokenizer.json" not in copied:
                raise AttnkdError(f"no tokenizer files (vocab.txt / tokenizer.json) in {src}")
            for name in copied:
                shutil.copyfile(src / name, tmp / name)
    return out


def _pick_outputs(session) -> tuple[str | None, str | None]:
    """Names of the token-embedding (rank 3) and sentence-embedding (rank 2) float outputs."""
    tokens = sentence = None
    for out in session.get_outputs():
        if out.type != "tensor(float)":
            continue
        if len(out.shape) == 3 and tokens is None:
            tokens = out.name
        elif len(out.shape) == 2 and sentence is None:
            sentence = out.name
    return tokens, sentence


def verify_against_onnxruntime(
    onnx_path: str | os.PathLike, hf_dir: str | os.PathLike, n: int = 8
) -> float:
    """Max abs difference between the ONNX graph (onnxruntime) and the converted folder.

    Runs ``n`` tokenized sentences of different lengths (padded batch) through both and
    compares the token embeddings ``(n, T, H)`` and, when the graph also returns one, the
    mean-pooled sentence embedding ``(n, H)``; returns the larger of the two maxima.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - optional dependency
        raise AttnkdError("verifying an ONNX conversion needs `pip install onnxruntime`") from err
    from transformers import AutoTokenizer, BertModel

    sentences = [_SENTENCES[i % len(_SENTENCES)] for i in range(n)]
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: batch[i.name].astype(np.int64) for i in session.get_inputs() if i.name in batch
    }
    if len(feeds) != len(session.get_inputs()):
        names = [i.name for i in session.get_inputs()]
        raise AttnkdError(f"cannot feed ONNX inputs {names} from the tokenizer output")
    tok_name, sent_name = _pick_outputs(session)
    if tok_name is None:
        raise AttnkdError("ONNX graph has no (batch, seq, hidden) float output to compare")
    wanted = [tok_name] + ([sent_name] if sent_name else [])
    ort_out = dict(zip(wanted, session.run(wanted, feeds)))

    model = BertModel.from_pretrained(str(hf_dir), add_pooling_layer=False).eval()
    mask = torch.from_numpy(batch["attention_mask"]).long()
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(batch["input_ids"]).long(), attention_mask=mask)
    tokens = hidden.last_hidden_state
    diff = (tokens - torch.from_numpy(ort_out[tok_name])).abs().max().item()
    if sent_name:
        m = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)
        diff = max(diff, (pooled - torch.from_numpy(ort_out[sent_name])).abs().max().item())
    if not math.isfinite(diff):
        raise AttnkdError("ONNX and converted model outputs contain NaN/inf")
    return diff
