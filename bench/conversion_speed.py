"""Teacher (SDPA softmax attention) vs converted attention, side by side in one run.

Decoder (SmolLM2-135M-Instruct, all 30 layers converted to hybrid window + linear;
``--window 128 --terrace --sinks 4`` for the window and sinks of ``smollm2-hybrid.yaml``):
- ``forward``: one whole-model forward (embeddings, 30 layers, final norm, LM head) at each
  ``--sizes`` length, batch 1, prefill-style: logits of the last position only
  (``logits_to_keep=1``, both sides; the other positions' logits are not needed to decode). The
  first call also gives the peak extra resident memory; ``--repeats`` calls in all, alternating
  teacher / converted (median time); the last builds the decoding cache of that prompt;
- ``decode``: from that cache, ``--steps`` greedy tokens one at a time through the whole model:
  tokens/s, and the cache's bytes after the prompt (teacher: its DynamicCache keys/values;
  converted: window buffers + linear states).
``summary`` in the JSON: forward and decoding speed-ups at the longest context, the cache ratio
there, and the spread of the converted model's decoding tokens/s over all contexts (max / min
- 1, and each context against the shortest).
Encoder (all-MiniLM-L6-v2, linear and hybrid): its six attention modules alone and the whole
model, batch ``--batch`` x 512. ``--per-layer``: one SmolLM2 decoder layer instead of the whole
model (see :func:`bench_layer`).

Measurements alternate teacher / converted case by case, so load from other processes falls on
both. Each time is taken twice: wall clock and this process's CPU time (``time.process_time``,
all threads), whose ratio is the steadier one on a machine shared with other jobs. The feature
maps are untrained (speed does not depend on their values). The load average before and after
is stored in ``meta``.
``--json PATH`` writes ``{"meta": ..., "summary": ..., "records": [{"model", "kind", "context",
"speedup", "cpu_speedup", "memory_ratio", ...}]}``: speedup = teacher time / converted time
(decode: converted tokens/s / teacher tokens/s), memory_ratio = converted / teacher (forward:
peak extra memory; decode: cache bytes).

    python bench/conversion_speed.py --skip-encoder --window 128 --terrace --sinks 4 \
        --kinds hybrid,window --threads 1 --repeats 1 --steps 32 \
        --json results/conversion_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import time

# Many small kernels on a busy machine: busy-waiting OpenMP threads make every op pay for the
# other processes (set before torch loads its OpenMP runtime; override from the environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from attnkd.convert import ConversionSpec, MixerState, convert_attention  # noqa: E402
from attnkd.eval.memory import reset_peak, status_kb  # noqa: E402
from attnkd.models.load import freeze, load_causal_lm, load_encoder  # noqa: E402

DECODER = "HuggingFaceTB/SmolLM2-135M-Instruct"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def _settle_heap() -> None:
    """The same allocator state before every measured call: glibc's malloc with the mmap
    threshold at its ceiling (32 MiB, where glibc's own adaptive threshold ends up after the
    first large frees; a low fixed threshold makes every mid-sized tensor a fresh mmap and
    page-faults the many temporaries of the converted layers) and freed heap memory returned
    to the system, so that a peak reading (VmHWM) is this call's own: its live tensors plus
    the heap it had to grow."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


class _Timer:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _timed(fns: dict, repeats: int) -> dict[str, dict]:
    """``repeats`` timed calls of each function, alternating (load falls on all), the first of
    which also measures its peak memory (read outside the timed block): per key the medians of
    wall and CPU seconds (``s``, ``cpu_s``), the peak bytes (``mem``) and the result of its last
    call (``last``). Each function takes ``keep`` (True on the last call)."""
    out: dict[str, dict] = {key: {"times": []} for key in fns}
    for r in range(max(1, repeats)):
        for key, fn in fns.items():
            if r == 0:
                _settle_heap()
                base = reset_peak()
            with _Timer() as t:
                out[key]["last"] = fn(r == repeats - 1)
            if r == 0:
                out[key]["mem"] = max(0, status_kb("VmHWM") - base) * 1024
            out[key]["times"].append((t.wall, t.cpu))
    for res in out.values():
        times = res.pop("times")
        res["s"] = statistics.median(w for w, _ in times)
        res["cpu_s"] = statistics.median(c for _, c in times)
    return out


def _pair(teacher_fn, converted_fn, repeats: int) -> dict:
    """:func:`_timed` of a teacher and a converted function, keys ``t_s``, ``c_cpu_s``, ..."""
    res = _timed({"t": teacher_fn, "c": converted_fn}, repeats)
    return {f"{side}_{k}": v for side, r in res.items() for k, v in r.items()}


def _cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        if isinstance(layer, MixerState):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None:
            total += sum(x.numel() * x.element_size() for x in (layer.keys, layer.values))
    return total


def _decode(model, cache, steps: int) -> tuple[float, float]:
    """(tokens/s by wall clock, by CPU time) of ``steps`` greedy tokens after ``cache``."""
    nxt = torch.zeros(1, 1, dtype=torch.long)
    with _Timer() as t:
        for _ in range(steps):
            out = model(nxt, cache=cache, use_cache=True, logits_to_keep=1)
            cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    return steps / t.wall, steps / t.cpu


def _record(model, kind, context, t_value, c_value, t_mem, c_mem, higher_is_better, **extra):
    speedup = c_value / t_value if higher_is_better else t_value / c_value
    rec = {"model": model, "kind": kind, "context": context, "speedup": speedup,
           "memory_ratio": c_mem / t_mem if t_mem else None}  # fmt: skip
    rec.update(extra)
    print(json.dumps(rec), flush=True)
    return rec


def _name(kind: str, args) -> str:
    if kind not in ("window", "hybrid"):
        return f"SmolLM2-135M/{kind}"
    name = f"SmolLM2-135M/{kind}-w{args.window}" + ("-terrace" if args.terrace else "")
    return name + (f"-sinks{args.sinks}" if args.sinks else "")


def bench_decoder(args) -> list[dict]:
    """The teacher and each of ``--kinds`` (all 30 layers converted), context by context: each
    converted model's forward and decoding against the teacher's, timed in the same rounds."""
    teacher = freeze(load_causal_lm(DECODER, "sdpa", tokenizer=False).model)
    models = {}
    for kind in args.kinds:
        windowed = kind in ("window", "hybrid")
        spec = ConversionSpec(kind=kind, window=args.window, chunk=args.chunk,
                              terrace=args.terrace and windowed,
                              sinks=args.sinks if windowed else 0)  # fmt: skip
        models[_name(kind, args)] = convert_attention(teacher, spec).eval()
    vocab = teacher.config.vocab_size
    records = []

    def body(model, ids):
        def run(keep: bool):  # keep: return the decoding cache of the prompt
            out = model(ids, use_cache=keep, logits_to_keep=1)
            return out.cache if keep else None

        return run

    with torch.no_grad():
        for seq in args.sizes:
            ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(seq))
            fns = {"teacher": body(teacher, ids)}
            fns.update({name: body(m, ids) for name, m in models.items()})
            res = _timed(fns, args.repeats)
            t = res.pop("teacher")
            t_bytes = _cache_bytes(t["last"])
            t_tps, t_cpu = _decode(teacher, t["last"], args.steps)
            for name, c in res.items():
                records.append(_record(name, "forward", seq, t["s"], c["s"], t["mem"], c["mem"],
                                       False, cpu_speedup=t["cpu_s"] / c["cpu_s"],
                                       scope="whole model, logits of the last position",
                                       teacher_s=t["s"], converted_s=c["s"],
                                       teacher_cpu_s=t["cpu_s"], converted_cpu_s=c["cpu_s"],
                                       teacher_peak_bytes=t["mem"],
                                       converted_peak_bytes=c["mem"]))  # fmt: skip
                c_bytes = _cache_bytes(c["last"])
                c_tps, c_cpu = _decode(models[name], c["last"], args.steps)
                records.append(_record(name, "decode", seq, t_tps, c_tps, t_bytes, c_bytes, True,
                                       cpu_speedup=c_cpu / t_cpu,
                                       teacher_tokens_per_s=t_tps, converted_tokens_per_s=c_tps,
                                       teacher_cpu_tokens_per_s=t_cpu,
                                       converted_cpu_tokens_per_s=c_cpu,
                                       teacher_cache_bytes=t_bytes,
                                       converted_cache_bytes=c_bytes,
                                       steps=args.steps))  # fmt: skip
            del res, t
    return records


def bench_layer(args) -> list[dict]:
    """One SmolLM2 decoder layer (attention + MLP + norms; layer 0 of the teacher and of the
    converted model), batch 1: forward at each ``--sizes`` length, then ``--steps`` decoding
    tokens after a prompt of that length. The body is 30 such layers, so these ratios are the
    body's; the LM head (the same for both) is timed on one token so that whole-model decoding
    can be bounded. The converted layer's state comes from its own prompt forward; the
    teacher's cache holds random keys/values of the prompt's length (its cost per token depends
    on the length only), which spares a quadratic prompt forward."""
    from transformers import DynamicCache

    teacher = freeze(load_causal_lm(DECODER, "sdpa", tokenizer=False).model)
    spec = ConversionSpec(kind="hybrid", window=args.window, chunk=args.chunk, layers=[0],
                          terrace=args.terrace, sinks=args.sinks)  # fmt: skip
    converted = convert_attention(teacher, spec).eval()
    name = _name("hybrid", args)
    cfg = teacher.config
    t_layer, c_layer = teacher.model.layers[0], converted.model.layers[0]
    rotary = teacher.model.rotary_emb
    records = []
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x1 = torch.randn(1, 1, cfg.hidden_size, generator=g)
        with _Timer() as head:
            for _ in range(args.steps):
                teacher.lm_head(teacher.model.norm(x1))
        for seq in args.sizes:
            x = torch.randn(1, seq, cfg.hidden_size, generator=g)
            pos = torch.arange(seq)[None]
            pe = rotary(x, pos)

            def fwd(layer, x=x, pos=pos, pe=pe):
                return lambda _keep: layer(x, attention_mask=None, position_ids=pos,
                                           use_cache=False, position_embeddings=pe)  # fmt: skip

            r = _pair(fwd(t_layer), fwd(c_layer), args.repeats)
            records.append(_record(name, "forward", seq, r["t_s"], r["c_s"], r["t_mem"],
                                   r["c_mem"], False, scope="one decoder layer",
                                   cpu_speedup=r["t_cpu_s"] / r["c_cpu_s"], teacher_s=r["t_s"],
                                   converted_s=r["c_s"], teacher_cpu_s=r["t_cpu_s"],
                                   converted_cpu_s=r["c_cpu_s"], teacher_peak_bytes=r["t_mem"],
                                   converted_peak_bytes=r["c_mem"]))  # fmt: skip
            # decoding: teacher cache of length seq, converted state from its prompt forward
            t_cache, c_cache = DynamicCache(config=cfg), DynamicCache(config=cfg)
            kv = (1, cfg.num_key_value_heads, seq, cfg.head_dim)
            t_cache.update(torch.randn(kv, generator=g), torch.randn(kv, generator=g), 0)
            c_layer(x, attention_mask=None, position_ids=pos,
                    cache=c_cache, use_cache=True, position_embeddings=pe)  # fmt: skip
            t_bytes, c_bytes = _cache_bytes(t_cache), _cache_bytes(c_cache)
            per = {}
            for key, layer, cache in (("t", t_layer, t_cache), ("c", c_layer, c_cache)):
                with _Timer() as t:
                    for i in range(args.steps):
                        p1 = torch.tensor([[seq + i]])
                        layer(x1, attention_mask=None, position_ids=p1,
                              cache=cache, use_cache=True,
                              position_embeddings=rotary(x1, p1))  # fmt: skip
                per[key] = (args.steps / t.wall, args.steps / t.cpu)
            layers = cfg.num_hidden_layers  # whole model: 30 layers + LM head, CPU time
            whole = [1.0 / (layers / per[k][1] + head.cpu / args.steps) for k in ("t", "c")]
            records.append(_record(name, "decode", seq, per["t"][0], per["c"][0], t_bytes,
                                   c_bytes, True, scope="one decoder layer",
                                   cpu_speedup=per["c"][1] / per["t"][1],
                                   teacher_tokens_per_s=per["t"][0],
                                   converted_tokens_per_s=per["c"][0],
                                   teacher_cpu_tokens_per_s=per["t"][1],
                                   converted_cpu_tokens_per_s=per["c"][1],
                                   whole_model_cpu_tokens_per_s={"teacher": whole[0],
                                                                 "converted": whole[1]},
                                   whole_model_cpu_speedup=whole[1] / whole[0],
                                   teacher_cache_bytes=t_bytes, converted_cache_bytes=c_bytes,
                                   steps=args.steps))  # fmt: skip
    return records


def bench_encoder(args) -> list[dict]:
    teacher = freeze(load_encoder(ENCODER, "sdpa", tokenizer=False).model)
    seq, batch = 512, args.batch
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, teacher.config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    hidden = torch.randn(batch, seq, teacher.config.hidden_size, generator=g)
    records = []
    for kind in ("linear", "hybrid"):
        converted = convert_attention(teacher, ConversionSpec(kind=kind, window=args.window)).eval()
        name = f"all-MiniLM-L6-v2/{kind}" + ("" if kind == "linear" else f"-w{args.window}")

        def attention_only(model):
            mods = [layer.attention.self for layer in model.encoder.layer]
            return lambda: [m(hidden)[0] for m in mods]

        with torch.no_grad():
            for scope, t_fn, c_fn in (
                ("attention layers", attention_only(teacher), attention_only(converted)),
                ("whole model", lambda: teacher(ids, attention_mask=mask),
                 lambda m=converted: m(ids, attention_mask=mask)),
            ):  # fmt: skip
                r = _pair(lambda _k, f=t_fn: f(), lambda _k, f=c_fn: f(), args.repeats)
                records.append(_record(name, "forward", seq, r["t_s"], r["c_s"], r["t_mem"],
                                       r["c_mem"], False, cpu_speedup=r["t_cpu_s"] / r["c_cpu_s"],
                                       scope=scope, batch=batch, teacher_s=r["t_s"],
                                       converted_s=r["c_s"], teacher_cpu_s=r["t_cpu_s"],
                                       converted_cpu_s=r["c_cpu_s"]))  # fmt: skip
    return records


def summarise(records: list[dict]) -> dict:
    """Per converted decoder: figures at the longest context and the spread of its decoding
    tokens/s over the contexts (max / min - 1, and each context against the shortest)."""
    out = {}
    for name in dict.fromkeys(r["model"] for r in records if r["model"].startswith("SmolLM2")):
        fwd = {r["context"]: r for r in records if r["model"] == name and r["kind"] == "forward"}
        dec = {r["context"]: r for r in records if r["model"] == name and r["kind"] == "decode"}
        if not fwd or not dec:
            continue
        top, low = max(fwd), min(dec)
        tps = {c: r["converted_tokens_per_s"] for c, r in sorted(dec.items())}
        out[name] = {
            "context": top,
            "forward_speedup": fwd[top]["speedup"],
            "forward_cpu_speedup": fwd[top]["cpu_speedup"],
            "decode_speedup": dec[top]["speedup"],
            "decode_cpu_speedup": dec[top]["cpu_speedup"],
            "cache_ratio": dec[top]["memory_ratio"],
            "converted_decode_tokens_per_s": tps,
            "converted_decode_spread": max(tps.values()) / min(tps.values()) - 1,
            "converted_decode_vs_shortest": {c: v / tps[low] for c, v in tps.items()},
        }
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=_ints, default=[512, 2048, 8192, 16384])
    p.add_argument("--steps", type=int, default=16, help="decode steps per context")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--chunk", type=int, default=None, help="chunk of the parallel form")
    p.add_argument("--terrace", action="store_true", help="terraced window (tiles of --window)")
    p.add_argument("--sinks", type=int, default=0, help="window/hybrid: attention sinks")
    p.add_argument("--kinds", type=lambda t: t.split(","), default=["hybrid"],
                   help="decoder: converted kinds to time against the teacher (hybrid,window,"
                   "linear)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="encoder batch")
    p.add_argument("--skip-encoder", action="store_true")
    p.add_argument("--skip-decoder", action="store_true")
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="decoder: one layer instead of the whole body (a 30th of the time; see bench_layer)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default); 1 avoids thread wake-ups on a busy box",
    )
    p.add_argument("--note", default="", help="free text stored in meta (e.g. 'under load')")
    p.add_argument("--json", default=None)
    p.add_argument("--report", default=None,
                   help="folder for an HTML page of the curves (needs --json); or later: "
                   "python -m attnkd.report.speed JSON... --out DIR")  # fmt: skip
    args = p.parse_args()
    if args.report and not args.json:
        p.error("--report needs --json (the page is drawn from that file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    records = []
    if not args.skip_encoder:
        records += bench_encoder(args)
    if not args.skip_decoder:
        records += bench_layer(args) if args.per_layer else bench_decoder(args)
    meta = {
        "command": "python bench/conversion_speed.py "
        + " ".join(
            f"--{k.replace('_', '-')}"
            + ("" if v is True else f" {','.join(map(str, v)) if isinstance(v, list) else v}")
            for k, v in vars(args).items()
            if k != "json" and v is not None and v is not False and v != ""
        ),  # fmt: skip
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "note": args.note,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"meta": meta, "summary": summarise(records), "records": records}, fh,
                      indent=2)  # fmt: skip
            fh.write("\n")
        os.replace(tmp, args.json)
    if args.report:
        from attnkd.report.speed import speed_report

        print(speed_report([args.json], args.report))


if __name__ == "__main__":
    main()
