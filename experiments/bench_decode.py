"""Decoding throughput on CPU: lmfuse's sampler against Hugging Face `generate`, in one process.

    python experiments/bench_decode.py                # full run, prints the table
    python experiments/bench_decode.py --quick        # smoke run: tiny model, 16 tokens, batch 1, 4
    python experiments/bench_decode.py --write        # also records the table in BENCHMARKS.md
    python experiments/bench_decode.py --profile      # adds per-step times and the step's writes
    python experiments/bench_decode.py --top_k 50     # top-k sampling instead of greedy
    python experiments/bench_decode.py --beam 4 --batch_sizes 1,8 --new_tokens 64   # beam search
    python experiments/bench_decode.py --override model.fused_qkv=True   # a model option

Model: a GPT-2-shaped Transformer LM with random weights (vocab 8000, width 384, 6 layers,
6 heads, MLP 1536, learned positions for prompt + new tokens, tanh GELU, tied head; 13.8M
parameters). It is built as a Hugging Face `GPT2LMHeadModel` and loaded into lmfuse with
`lmfuse.interop.hf_gpt2`, so both sides hold the same weights (parameter counts are asserted
equal). Prompts are BOS + 7 random tokens; every row gets exactly `--new_tokens` (256) greedy
tokens: no side stops at EOS, and both suppress PAD (lmfuse's sampler always does).

Four decoders of the same function, all fp32:

* lmfuse: `lmfuse.decode.sample(lm_decode_step(model), ..., temperature=0, eos_id=None)`: the
  prefill and the whole token loop in one jitted program, with a KV cache.
* HF: `GPT2LMHeadModel.generate(do_sample=False, use_cache=True)` under
  `torch.inference_mode()` (SDPA attention), with `torch.set_num_threads` set to the number of
  CPUs XLA's client uses (all of them).
* no cache: `full_forward_decode_step` below, through the same `sample`. Each step re-runs the
  model over a fixed [B, max_len] token buffer and takes the logits at the current position:
  the work a KV cache saves. Its steps all cost the same, so it generates only
  `--no_cache_tokens` (16) tokens per call, into the same max_len buffer (at batch 32 each
  forward pass covers 32 x 264 positions); n tokens cost n + 1 forward passes (the prefill is
  one), which puts its tokens/s about 6% below its rate over 256 tokens.
* minimal JAX: `experiments/minimal/minimal_transformer.py`'s `generate` on the same weights
  (converted with its `from_lmfuse`): the same model math as one plain program, a prefill and
  a `lax.fori_loop` of one-token steps over a [B, N, S, H] KV cache, PAD suppressed. lmfuse /
  minimal JAX is the decoding framework's overhead (1.0x: none).

`--top_k K` samples from the K most likely tokens instead (temperature 1): lmfuse's
`sample(..., top_k=K)`, HF `generate(do_sample=True, top_k=K)` and the minimal program's
`generate(..., top_k=K)`; the no-cache decoder is greedy-only and left out. Sampled tokens
differ between decoders, so they are not compared.

`--beam K` runs beam search with K beams instead: lmfuse's `beam_search(..., beam_size=K,
eos_id=None)` (one compiled loop, the cache grown in phases) against HF `generate(num_beams=K,
do_sample=False)`. With no EOS every hypothesis has the same length, so both rank by the sum of
log-probs whatever their length penalties, and the best beam's tokens are compared as greedy
tokens are. No-cache and minimal-JAX decoders have no beam search and are left out.

Timing: the first call of each decoder is not counted (for lmfuse it traces and compiles;
"compile" is that call's time minus the median counted call). Then each of `--repeats` repeats
calls every decoder once, in an order rotated by the repeat, so load from other processes hits
all of them alike. tokens/s = batch x generated tokens / wall time of one call (prefill included). Reported:
median tokens/s per decoder and the medians of the per-repeat ratios lmfuse / HF and
lmfuse / no cache (the noise-robust numbers). Greedy check: the first 32 tokens (16 for the
no-cache decoder) of every decoder's first call are compared with lmfuse's; at batch 1 a mismatch means the decoders
compute different functions, and the script then exits with status 1.

Run it on an idle machine: PyTorch's OpenMP threads slow down many times over when other
processes take cores, far more than XLA's thread pool does (on a 2-core VM under a load of
about 3, HF `generate` on the `--quick` model took 56 ms per token with 2 threads and 1.4 ms
with 1). `--threads N` pins the
process to N CPUs, so both sides use N threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers
from bench_train import cpu_model, graded, write_generated_block
from jax import lax
from minimal import minimal_transformer

from lmfuse.config import apply_override
from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.decode import DecodeStep, beam_search, left_pad, lm_decode_step, sample
from lmfuse.errors import LmfuseError
from lmfuse.interop import load_gpt2
from lmfuse.models import build_model
from lmfuse.models.transformer import TransformerLM

SHAPES = {
    "full": dict(vocab=8000, emb_dim=384, num_layers=6, num_heads=6, mlp_dim=1536),
    "quick": dict(vocab=512, emb_dim=64, num_layers=2, num_heads=2, mlp_dim=256),
}
PROMPT_LEN = 8  # BOS + 7 random tokens
CHECK_TOKENS = 32  # leading tokens compared between decoders
# The acceptance bars: lmfuse / HF for greedy and top-k sampling at these batch sizes, for beam
# search at every batch size, and lmfuse / minimal JAX (no framework overhead) on every path.
TARGETS = {1: 3.0, 32: 2.0}
BEAM_TARGET = 2.0
MINIMAL_TARGET = 1.0
DECODERS = ("lmfuse", "hf", "no_cache", "minimal_jax")
LABELS = {"lmfuse": "lmfuse", "hf": "HF generate", "no_cache": "no cache",
          "minimal_jax": "minimal JAX"}
SECTION = "## Decoding throughput (CPU)"


# ---------------------------------------------------------------------------------------------
# The model, on both sides


def build_models(shape: dict, max_len: int, seed: int = 0, overrides: Sequence[str] = ()):
    """A random HF GPT-2 and the same weights as a lmfuse TransformerLM: (hf, model, params).
    `overrides` ('model.KEY=VALUE') change lmfuse's model options that keep the parameters'
    layout, e.g. model.fused_qkv=True."""
    config = transformers.GPT2Config(
        vocab_size=shape["vocab"], n_positions=max_len, n_embd=shape["emb_dim"],
        n_layer=shape["num_layers"], n_head=shape["num_heads"], n_inner=shape["mlp_dim"],
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(config).eval()
    model_cfg, params = load_gpt2(hf.state_dict(), hf_config=hf.config)
    root = ml_collections.ConfigDict()
    root.model = model_cfg
    for override in overrides:
        if not override.removeprefix("--config.").startswith("model."):
            raise LmfuseError(f"--override {override!r}: only model.KEY=VALUE options apply here")
        apply_override(root, override)
    model = build_model(root.model, vocab_size=shape["vocab"])
    try:  # an option that changes the parameters' layout cannot decode these weights
        jax.eval_shape(lambda: model.apply({"params": params}, jnp.ones((1, 2), jnp.int32)))
    except Exception as error:
        raise LmfuseError(f"--override {' '.join(overrides)}: the model no longer takes the "
                          f"GPT-2 weights ({type(error).__name__}); set only options that keep "
                          "the parameters, e.g. model.fused_qkv=True") from None
    ours = sum(x.size for x in jax.tree.leaves(params))
    if ours != hf.num_parameters():
        raise AssertionError(f"parameter counts differ: lmfuse {ours:,}, HF {hf.num_parameters():,}")
    return hf, model, params


def random_prompts(batch: int, vocab: int, seed: int) -> np.ndarray:
    """[B, PROMPT_LEN] int32: BOS, then tokens that are neither PAD, EOS nor BOS."""
    rng = np.random.default_rng(seed)
    body = rng.integers(3, vocab, (batch, PROMPT_LEN - 1))
    return np.concatenate([np.full((batch, 1), BOS_ID), body], axis=1).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# The no-cache baseline


@dataclasses.dataclass(frozen=True)
class _FullForward:
    """Re-runs the whole model every step over a [B, model.cfg.max_len] buffer.

    State: tokens, segment ids and positions of the buffer (all [B, max_len] int32; slots after
    the prompt are already segment 1 with their final positions, and causal attention keeps the
    not-yet-written ones from reaching the current position) and `index`, the next slot.
    Frozen and hashable, so `sample` compiles once per model.
    """

    model: TransformerLM

    def init(self, params, batch: dict, max_len: int):
        length = self.model.cfg.max_len
        if max_len > length:
            raise ValueError(f"{max_len} positions do not fit the model's max_len={length}")
        prompt = left_pad(batch["prompt"].astype(jnp.int32))
        rows, prompt_len = prompt.shape
        tokens = jnp.zeros((rows, length), jnp.int32).at[:, :prompt_len].set(prompt)
        segments = jnp.ones((rows, length), jnp.int32).at[:, :prompt_len].set(prompt != PAD_ID)
        positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
        state = {"tokens": tokens, "segment_ids": segments, "positions": positions,
                 "index": jnp.asarray(prompt_len, jnp.int32)}
        return self._logits(params, state), state

    def step(self, params, state: dict, tokens: jax.Array):
        written = lax.dynamic_update_slice(state["tokens"], tokens[:, None].astype(jnp.int32),
                                           (0, state["index"]))
        state = {**state, "tokens": written, "index": state["index"] + 1}
        return self._logits(params, state), state

    def _logits(self, params, state: dict) -> jax.Array:
        """Logits [B, V] at the last written slot (the head runs on that one position only)."""
        variables = {"params": params}
        hidden = self.model.apply(variables, state["tokens"], state["segment_ids"],
                                  state["positions"], method="embed_and_hidden")
        last = lax.dynamic_slice_in_dim(hidden, state["index"] - 1, 1, axis=1)
        return self.model.apply(variables, last, method="logits_from_hidden")[:, 0]


def full_forward_decode_step(model: TransformerLM) -> DecodeStep:
    """A DecodeStep without a KV cache (see `_FullForward`), for learned-position LMs."""
    bound = _FullForward(model)
    return DecodeStep(bound.init, bound.step)


# ---------------------------------------------------------------------------------------------
# The decoders: prompt [B, P] int32 -> generated tokens [B, n] int32


@dataclasses.dataclass
class LmfuseDecoder:
    decode_step: DecodeStep
    params: dict
    new_tokens: int
    top_k: int = 0  # 0: greedy
    beam: int = 0  # > 0: beam search with this many beams (the best beam's tokens)

    def __call__(self, prompt: np.ndarray) -> np.ndarray:
        if self.beam:
            out = beam_search(self.decode_step, self.params, {"prompt": jnp.asarray(prompt)},
                              beam_size=self.beam, max_new_tokens=self.new_tokens, eos_id=None)
            return np.asarray(out.tokens[:, 0])
        sampling = dict(temperature=1.0, top_k=self.top_k) if self.top_k else dict(temperature=0.0)
        out = sample(self.decode_step, self.params, {"prompt": jnp.asarray(prompt)},
                     jax.random.key(0), max_new_tokens=self.new_tokens, eos_id=None, **sampling)
        return np.asarray(out.tokens[:, 0])


@dataclasses.dataclass
class MinimalDecoder:
    """`minimal_transformer.generate` on lmfuse's weights, converted once."""

    params: dict
    cfg: minimal_transformer.Config
    new_tokens: int
    top_k: int = 0

    def __call__(self, prompt: np.ndarray) -> np.ndarray:
        out = minimal_transformer.generate(self.params, jnp.asarray(prompt), jax.random.key(0),
                                           self.cfg, self.new_tokens, self.top_k)
        return np.asarray(out)


def minimal_decoder(shape: dict, params: dict, max_len: int, new_tokens: int, top_k: int) -> MinimalDecoder:
    cfg = minimal_transformer.Config(
        vocab=shape["vocab"], emb=shape["emb_dim"], layers=shape["num_layers"],
        heads=shape["num_heads"], mlp=shape["mlp_dim"], max_len=max_len, positions="learned",
        activation="gelu_new")  # GPT-2's
    return MinimalDecoder(minimal_transformer.from_lmfuse(params), cfg, new_tokens, top_k)


@dataclasses.dataclass
class HfDecoder:
    model: transformers.GPT2LMHeadModel
    new_tokens: int
    top_k: int = 0
    beam: int = 0

    def __call__(self, prompt: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(prompt).long()
        sampling = (dict(do_sample=True, top_k=self.top_k, temperature=1.0, top_p=1.0)
                    if self.top_k else dict(do_sample=False))
        config = transformers.GenerationConfig(
            max_new_tokens=self.new_tokens, num_beams=max(self.beam, 1), use_cache=True,
            eos_token_id=None,
            bos_token_id=BOS_ID, pad_token_id=PAD_ID, suppress_tokens=[PAD_ID], **sampling,
        )
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return out[:, ids.shape[1]:].numpy().astype(np.int32)


def timed(decoder: Callable[[np.ndarray], np.ndarray], prompt: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    tokens = decoder(prompt)  # numpy: the work is done when it returns
    return time.perf_counter() - start, tokens


# ---------------------------------------------------------------------------------------------
# Benchmark


def bench_batch(decoders: dict, batch: int, vocab: int, args) -> dict:
    prompt = random_prompts(batch, vocab, seed=batch)
    first, outputs = {}, {}
    for name, decoder in decoders.items():  # one compile at a time
        first[name], outputs[name] = timed(decoder, prompt)
    # Greedy: each decoder against lmfuse over its own first tokens (the no-cache one makes
    # fewer). Sampled tokens differ between decoders: not compared.
    checked = {name: min(CHECK_TOKENS, o.shape[1]) for name, o in outputs.items()}
    rows_equal = {} if args.top_k else {
        name: int(np.all(o[:, :n] == outputs["lmfuse"][:, :n], axis=1).sum())
        for (name, o), n in zip(outputs.items(), checked.values(), strict=True)}

    generated = {name: batch * o.shape[1] for name, o in outputs.items()}
    tps = {name: [] for name in decoders}
    for repeat in range(args.repeats):
        names = list(decoders)
        names = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in names:
            seconds, _ = timed(decoders[name], prompt)
            tps[name].append(generated[name] / seconds)
        print(f"  batch {batch} repeat {repeat + 1}/{args.repeats} (load {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{LABELS[d]} {tps[d][-1]:,.0f} tok/s" for d in decoders), flush=True)

    median_seconds = {name: generated[name] / statistics.median(t) for name, t in tps.items()}
    return {
        "batch": batch,
        "beam": args.beam,
        "tps": tps,
        "median": {name: statistics.median(t) for name, t in tps.items()},
        # lmfuse / each other decoder: the median of the per-repeat tokens/s ratios.
        "ratio": {name: statistics.median(a / b for a, b in zip(tps["lmfuse"], t, strict=True))
                  for name, t in tps.items() if name != "lmfuse"},
        "compile_s": {name: first[name] - median_seconds[name] for name in decoders if name != "hf"},
        "checked": checked,
        "rows_equal": rows_equal,
        "generated": {name: o.shape[1] for name, o in outputs.items()},
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """A table cell: `value` formatted, '-' for a decoder that did not run."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def target_text(r: dict) -> str:
    """Each acceptance bar this row has a peer for, and whether it is met."""
    return graded([("HF", "hf", BEAM_TARGET if r.get("beam") else TARGETS.get(r["batch"])),
                   ("minimal JAX", "minimal_jax", MINIMAL_TARGET)], r["ratio"])


def check_text(r: dict) -> str:
    """How many rows of each other decoder's greedy tokens equal lmfuse's."""
    if not r["rows_equal"]:
        return "sampled: not compared"
    return ", ".join(f"{LABELS[d]} {n}/{r['batch']} (first {r['checked'][d]})"
                     for d, n in r["rows_equal"].items() if d != "lmfuse")


def print_table(results: list[dict], info: dict) -> None:
    names = [d for d in DECODERS if d in results[0]["tps"]]
    others = [d for d in names if d != "lmfuse"]
    print()
    print(f"{'batch':>5}" + "".join(f"{LABELS[d] + ' tok/s':>20}" for d in names)
          + "".join(f"{'lmfuse/' + LABELS[d]:>21}" for d in others) + f"{'compile s':>11}  target")
    for r in results:
        m = r["median"]
        print(f"{r['batch']:>5}" + "".join(f"{m[d]:>20,.0f}" for d in names)
              + "".join(f"{r['ratio'][d]:>20.2f}x" for d in others)
              + f"{r['compile_s']['lmfuse']:>11.1f}  {target_text(r)}")
        print(f"{'':>5}rows whose {'best-beam' if r['beam'] else 'greedy'} tokens equal "
              f"lmfuse's: {check_text(r)}")
    print("(ratios: medians of the per-repeat tokens/s ratios; below 1.0x lmfuse is slower)")
    print(f"{info['params']:,} parameters; 1-minute load average before / after: "
          f"{info['load'][0]:.2f} / {info['load'][1]:.2f}")


def markdown(results: list[dict], args, info: dict) -> str:
    n = results[0]["generated"]
    names = [d for d in DECODERS if d in results[0]["tps"]]
    mode = (f"beam search, {args.beam} beams" if args.beam else
            f"top-{args.top_k} sampling (temperature 1)" if args.top_k else "greedy")
    no_cache = (f" (the no-cache decoder: {n['no_cache']} tokens into the same buffer)"
                if "no_cache" in n else "")
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}, {os.cpu_count()} cores "
        f"(JAX {jax.__version__}, PyTorch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}); fp32, GPT-2 shape "
        f"{info['shape_text']}, {info['params']:,} parameters, random weights; prompt "
        f"{PROMPT_LEN} tokens, {n['lmfuse']} new tokens per row, {mode}, no EOS stop"
        f"{no_cache}; {args.repeats} repeats, decoders interleaved; PyTorch threads = "
        f"{torch.get_num_threads()}, XLA CPUs = {info['xla_cpus']}; 1-minute load average "
        f"{info['load'][0]:.1f} before / {info['load'][1]:.1f} after.",
        "",
        f"    {info['command']}",
        "",
        "| batch | lmfuse tok/s | HF generate tok/s | no cache tok/s | minimal JAX tok/s "
        "| lmfuse / HF (median pair ratio) | target | lmfuse / no cache | lmfuse / minimal JAX "
        "| compile lmfuse / no cache / minimal JAX (s) | greedy (beam: best beam's) tokens equal "
        "lmfuse's (rows) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        m, c, ratio = r["median"], r["compile_s"], r["ratio"]
        compile_s = " / ".join(_fmt(c.get(d), ".1f") for d in ("lmfuse", "no_cache", "minimal_jax"))
        lines.append(
            f"| {r['batch']} | {m['lmfuse']:,.0f} | {_fmt(m.get('hf'), ',.0f')} "
            f"| {_fmt(m.get('no_cache'), ',.0f')} | {_fmt(m.get('minimal_jax'), ',.0f')} "
            f"| {_fmt(ratio.get('hf'), '.2f', 'x')} | {target_text(r)} "
            f"| {_fmt(ratio.get('no_cache'), '.2f', 'x')} | {_fmt(ratio.get('minimal_jax'), '.2f', 'x')} "
            f"| {compile_s} | {check_text(r)} |"
        )
    lines += ["", f"Per-repeat tokens/s ({'; '.join(LABELS[d] for d in names)}):", ""]
    for r in results:
        runs = "; ".join(", ".join(f"{x:,.0f}" for x in r["tps"][d]) for d in names)
        lines.append(f"- batch {r['batch']}: {runs}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Profile: one decode step, and what its compiled program writes


def hlo_writes(hlo_text: str) -> dict[str, tuple[int, float]]:
    """{category: (instructions, MB written)} over the top-level instructions of the largest
    while-loop body in `hlo_text` (the token loop), or of ENTRY when there is no loop.

    On CPU a decode step is memory-bound, so the bytes each kind of instruction writes show
    where its time goes. Fusions are classified by the name XLA gives them (it names a fusion
    after the ops inside).
    """
    computations = dict(re.findall(r"^(?:ENTRY )?%(\S+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S))
    bodies = re.findall(r"body=%([\w.\-]+)", hlo_text)
    name = max(bodies, key=lambda b: len(computations.get(b, "")), default=None)
    if name is None:
        name = re.search(r"^ENTRY %(\S+)", hlo_text, re.M).group(1)
    sizes = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}
    groups: dict[str, list[int]] = {}
    for line in computations[name].splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* ([\w\-]+)\(", line)
        if not match or match.group(4) in ("parameter", "constant", "bitcast", "get-tuple-element"):
            continue
        label, dtype, dims, op = match.groups()
        nbytes = sizes.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        if "__ynn_fusion" in line or op in ("dot", "custom-call"):
            category = "matmuls and reductions"
        elif "dynamic-update-slice" in label or op == "dynamic-update-slice":
            category = "cache writes (dynamic-update-slice)"
        elif any(word in label for word in ("copy", "transpose", "concatenate")) or op in ("copy", "transpose", "concatenate"):
            category = "layout copies, slices and stacking"
        else:
            category = "other fusions"
        count, total = groups.get(category, [0, 0])
        groups[category] = [count + 1, total + nbytes]
    return {k: (v[0], v[1] / 2**20) for k, v in sorted(groups.items(), key=lambda kv: -kv[1][1])}


def profile(hf, model, params, batch_sizes: list[int], new_tokens: int, vocab: int) -> None:
    """Prints, per batch size, one compiled lmfuse decode step against one HF forward with a
    cache of the same length, and what the compiled lmfuse token loop writes per step."""
    decode_step = lm_decode_step(model)
    init = jax.jit(decode_step.init, static_argnums=2)
    step = jax.jit(decode_step.step, donate_argnums=1)
    loop = jax.jit(lambda p, prompt: sample(
        decode_step, p, {"prompt": prompt}, jax.random.key(0), max_new_tokens=new_tokens,
        temperature=0.0, eos_id=None).tokens)
    weights_mb = sum(x.nbytes for x in jax.tree.leaves(params)) / 2**20
    print(f"\nprofile: about {PROMPT_LEN + new_tokens // 2} tokens in the cache; parameters "
          f"{weights_mb:.0f} MB")
    for batch in batch_sizes:
        prompt = random_prompts(batch, vocab, seed=batch)
        max_len = PROMPT_LEN + new_tokens
        logits, state = init(params, {"prompt": jnp.asarray(prompt)}, max_len)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        times = []
        for i in range(new_tokens // 2 + 10):
            start = time.perf_counter()
            logits, state = step(params, state, token)
            jax.block_until_ready(logits)
            if i >= new_tokens // 2 - 10:  # steps around the middle of the cache
                times.append(time.perf_counter() - start)
        ours = statistics.median(times) * 1e3
        cache_mb = sum(x.nbytes for x in jax.tree.leaves(state["cache"]["layers"])) / 2**20

        ids = torch.from_numpy(prompt).long().repeat(1, 1 + new_tokens // (2 * PROMPT_LEN))
        times = []
        with torch.inference_mode():
            cache = hf(ids, use_cache=True).past_key_values
            next_ids = ids[:, -1:]
            for _ in range(20):
                start = time.perf_counter()
                hf(next_ids, past_key_values=cache, use_cache=True)
                times.append(time.perf_counter() - start)
                cache.crop(-1)  # back to the same length
        theirs = statistics.median(times) * 1e3
        print(f"batch {batch}: lmfuse step {ours:.2f} ms, HF forward {theirs:.2f} ms "
              f"(lmfuse / HF time {ours / theirs:.2f}); KV cache {cache_mb:.0f} MB")

        text = loop.lower(params, jnp.asarray(prompt)).compile().as_text()
        print("  written per step by the compiled token loop:")
        for category, (count, mb) in hlo_writes(text).items():
            print(f"    {category:<40}{count:>5} instructions{mb:>9,.1f} MB")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a tiny model, 16 new tokens, batches 1,4, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per decoder (default 5)")
    parser.add_argument("--new_tokens", type=int, default=None, help="tokens generated per row (default 256)")
    parser.add_argument("--no_cache_tokens", type=int, default=16,
                        help="tokens the no-cache decoder generates per call (at most --new_tokens)")
    parser.add_argument("--batch_sizes", default=None, help="comma list (default 1,32)")
    parser.add_argument("--top_k", type=int, default=0,
                        help="sample from the K most likely tokens instead of greedy (default 0: "
                             "greedy); the no-cache decoder is then left out")
    parser.add_argument("--beam", type=int, default=0,
                        help="beam search with this many beams instead (default 0: sampling); "
                             "the no-cache and minimal-JAX decoders are then left out")
    parser.add_argument("--decoders", default=",".join(DECODERS),
                        help=f"comma list of the decoders to time besides lmfuse (default "
                             f"{','.join(DECODERS[1:])})")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin the process to its first N CPUs, so both sides use N threads "
                             "(default: all)")
    parser.add_argument("--override", action="append", default=[], metavar="model.KEY=VALUE",
                        help="lmfuse model option that keeps the parameters, e.g. "
                             "model.fused_qkv=True (the others decode the same weights)")
    parser.add_argument("--profile", action="store_true",
                        help="also time single decode steps and break down the compiled loop")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"),
                        help="markdown file to update (default: BENCHMARKS.md at the repo root)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.new_tokens = args.new_tokens or (16 if args.quick else 256)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4" if args.quick else "1,32")).split(",")]
    if args.repeats < 1 or args.new_tokens < 1 or args.no_cache_tokens < 1 or min(batch_sizes) < 1:
        parser.error("--repeats, --new_tokens, --no_cache_tokens and batch sizes must be positive")
    if args.top_k < 0 or args.beam < 0 or (args.top_k and args.beam):
        parser.error("--top_k and --beam are each 0 or positive, and one of them at most")
    names = {"lmfuse", *(d.strip() for d in args.decoders.split(",") if d.strip())}
    if names - set(DECODERS):
        parser.error(f"--decoders: choose from {', '.join(DECODERS[1:])}")
    if args.top_k or args.beam:
        names.discard("no_cache")  # a greedy-only reference
    if args.beam:
        names.discard("minimal_jax")  # it has no beam search
    shape = SHAPES["quick" if args.quick else "full"]

    if args.threads:  # before JAX starts its CPU client, which sizes its pool by the affinity
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    try:
        hf, model, params = build_models(shape, PROMPT_LEN + args.new_tokens, overrides=args.override)
    except LmfuseError as error:
        parser.error(str(error))
    max_len = PROMPT_LEN + args.new_tokens
    every = {
        "lmfuse": lambda: LmfuseDecoder(lm_decode_step(model), params, args.new_tokens, args.top_k,
                                        args.beam),
        "hf": lambda: HfDecoder(hf, args.new_tokens, args.top_k, args.beam),
        "no_cache": lambda: LmfuseDecoder(full_forward_decode_step(model), params,
                                          min(args.no_cache_tokens, args.new_tokens)),
        "minimal_jax": lambda: minimal_decoder(shape, params, max_len, args.new_tokens, args.top_k),
    }
    decoders = {name: make() for name, make in every.items() if name in names}
    command = "python " + " ".join(
        shlex.quote(a) for a in ["experiments/bench_decode.py", *(sys.argv[1:] if argv is None else argv)])
    load_before = os.getloadavg()[0]
    results = []
    for batch in batch_sizes:
        print(f"batch {batch}: first calls (the JAX decoders compile) ...", flush=True)
        results.append(bench_batch(decoders, batch, shape["vocab"], args))
    info = {
        "params": hf.num_parameters(), "load": (load_before, os.getloadavg()[0]),
        "command": command, "xla_cpus": threads,
        "shape_text": (f"vocab {shape['vocab']}, width {shape['emb_dim']}, {shape['num_layers']} "
                       f"layers, {shape['num_heads']} heads, MLP {shape['mlp_dim']}"),
    }
    print_table(results, info)
    print(f"command: {command}")
    if args.profile:
        profile(hf, model, params, batch_sizes, args.new_tokens, shape["vocab"])
    if args.write:
        key = (f"threads={args.threads or 'all'} new_tokens={args.new_tokens} "
               f"batch_sizes={','.join(map(str, batch_sizes))}"
               + (f" top_k={args.top_k}" if args.top_k else "")
               + (f" beam={args.beam}" if args.beam else "")
               + "".join(f" {o.removeprefix('--config.')}" for o in args.override))
        write_generated_block(Path(args.output), SECTION, "bench_decode", key,
                              markdown(results, args, info))
        print(f"wrote {args.output}")
    single = [r for r in results if r["batch"] == 1]
    if single and single[0]["rows_equal"].get("hf", 1) != 1:
        sys.exit("lmfuse's and HF's greedy tokens differ at batch 1: the decoders do not compute "
                 "the same function, so the comparison is unfair")


if __name__ == "__main__":
    main()
