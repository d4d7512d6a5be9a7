"""Training throughput on CPU: lmfuse (JAX) against the same models written in PyTorch and as a
minimal JAX program.

    python experiments/bench_train.py                 # full run, writes BENCHMARKS.md
    python experiments/bench_train.py --quick         # smoke run (small K, 2 repeats), prints only
    python experiments/bench_train.py --threads 1 --models lstm --batches 16,32 --no-write
                                                      # one pinned core, the LSTM at two batches

Two models, the same on every side (parameter counts are asserted equal):

* Transformer LM: emb 256, 4 layers, 4 heads, MLP 1024, learned positions, pre-LN, exact GELU,
  tied head, vocab 8000, seq 128, batch 16. PyTorch side: `torch.compile` of the model + loss.
* LSTM LM: emb 256, hidden 512, 2 layers, untied head, vocab 8000, seq 128, batch 32.
  PyTorch side: `torch.nn.LSTM` (eager, no compile). lmfuse keeps one bias per gate where
  `nn.LSTM` has two (b_ih + b_hh), so the PyTorch `bias_hh_l*` are zeroed and frozen: trainable
  parameters and the function computed are then the same.

Both sides train in float32 with AdamW (b1 0.9, b2 0.98, eps 1e-9, weight decay 0.01 on the
same matrices), global-norm clipping at 1.0 and no dropout, on random token batches. The lmfuse
side is the project's real training step: `lmfuse.train.trainer.build_trainer` (jit with a donated
state, sharding rules active, packed-row segment ids, warmup-cosine learning rate). Its
tokenizer is a stand-in object that only carries `vocab_size`, which is all `build_trainer`
reads from it.

The minimal JAX peer (`experiments/minimal/`, `--peers`) is the same math as one plain program:
a `jax.jit` train step (donated params and optimizer state) of optax AdamW with the same
settings, schedule and decay mask, the loss as a mean over tokens, no segment ids, no sharding
rules, no metrics. lmfuse / minimal JAX is the framework's overhead (1.0x: none).

Each (model, framework) runs in its own spawned worker process, so JAX's and PyTorch's thread
pools never share a process. The workers compile one after the other (the first train step is
timed as "compile"), then do one untimed warm-up run, then the parent asks them in turn for
`--repeats` timed runs of `--steps` steps each, in an order rotated every repeat, so that load
from other processes on the machine hits every side alike. Reported: the median tokens/s of
each side, the ratio of the medians, and the medians of the per-repeat ratios lmfuse / peer
(the most noise-robust numbers), with the 1-minute load average. PyTorch uses
`torch.set_num_threads(os.cpu_count())`, the count XLA's CPU client uses; `--threads N` pins
every worker to the first N CPUs (`os.sched_setaffinity`, before JAX or PyTorch starts its
thread pool), so both use N threads.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

VOCAB = 8000
SEQ = 128
# The acceptance bars: lmfuse / PyTorch (the LSTM at least as fast as torch.nn.LSTM) and
# lmfuse / minimal JAX (no framework overhead) for every model.
TORCH_TARGETS = {"lstm": 1.0}
MINIMAL_TARGET = 1.0
MODELS = {
    "transformer": dict(emb_dim=256, num_layers=4, num_heads=4, mlp_dim=1024, batch=16),
    "lstm": dict(emb_dim=256, hidden_dim=512, num_layers=2, batch=32),
}
OPTIM = dict(lr=1e-3, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01, clip=1.0)
NUM_BATCHES = 4  # distinct random batches, cycled through
SECTION = "## Training throughput (CPU)"


# ---------------------------------------------------------------------------------------------
# Data


def random_batches(batch: int, seed: int = 0) -> list[dict]:
    """Random packed-LM batches (numpy int32, [B, T]); one document per row, no padding."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(NUM_BATCHES):
        tokens = rng.integers(1, VOCAB, (batch, SEQ + 1), dtype=np.int32)
        ones = np.ones((batch, SEQ), np.int32)
        positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (batch, SEQ)).copy()
        out.append({
            "inputs": tokens[:, :-1].copy(),
            "targets": tokens[:, 1:].copy(),
            "inputs_segment_ids": ones,
            "targets_segment_ids": ones.copy(),
            "inputs_positions": positions,
            "targets_positions": positions.copy(),
        })
    return out


# ---------------------------------------------------------------------------------------------
# lmfuse (JAX)


class _VocabOnly:
    """Stand-in tokenizer: `build_trainer` only reads `vocab_size`."""

    vocab_size = VOCAB


def lmfuse_config(model: str, batch: int, overrides: list[str]):
    from lmfuse.config import apply_override
    from lmfuse.schema import base_config

    m = MODELS[model]
    config = base_config()
    config.data.seq_len = SEQ
    config.data.max_length = SEQ
    config.model.name = model
    config.model.emb_dim = m["emb_dim"]
    config.model.num_layers = m["num_layers"]
    config.model.dropout = 0.0
    config.model.dtype = "float32"
    config.model.max_len = SEQ
    if model == "transformer":
        config.model.num_heads = m["num_heads"]
        config.model.mlp_dim = m["mlp_dim"]
        config.model.positions = "learned"
        config.model.norm = "pre"
        config.model.activation = "gelu"
        config.model.tie_embeddings = True
    else:
        config.model.hidden_dim = m["hidden_dim"]
        config.model.tie_embeddings = False
    o = config.optimizer
    o.name, o.learning_rate, o.b1, o.b2, o.eps = "adamw", OPTIM["lr"], OPTIM["b1"], OPTIM["b2"], OPTIM["eps"]
    o.weight_decay, o.clip_norm, o.warmup_steps = OPTIM["weight_decay"], OPTIM["clip"], 10
    config.train.batch_size = batch
    config.train.steps = 100_000
    for override in overrides:
        apply_override(config, override)
    return config


class JaxRunner:
    def __init__(self, model: str, batch: int, overrides: list[str]):
        import jax

        from lmfuse.train import sharding
        from lmfuse.train.trainer import build_trainer

        self.jax, self.sharding = jax, sharding
        config = lmfuse_config(model, batch, overrides)
        self.trainer = build_trainer(config, _VocabOnly())
        self.batches = random_batches(batch)
        self.tokens_per_step = batch * SEQ
        self.num_params = self.trainer.num_params
        self.key = jax.random.key(1)
        self.index = 0
        with sharding.activate(self.trainer.mesh, self.trainer.rules):
            self.state = jax.block_until_ready(self.trainer.init_fn(jax.random.key(0)))
        self.versions = {"jax": jax.__version__, "jaxlib_backend": jax.default_backend()}
        self.threads = len(os.sched_getaffinity(0))  # XLA:CPU sizes its thread pool by this

    def steps(self, k: int) -> float:
        jax, trainer = self.jax, self.trainer
        metrics = None
        with self.sharding.activate(trainer.mesh, trainer.rules):
            for _ in range(k):
                batch = self.sharding.global_batch(self.batches[self.index % NUM_BATCHES], trainer.mesh, trainer.rules)
                self.index += 1
                self.state, metrics = trainer.train_step(self.state, batch, self.key)
            jax.block_until_ready((self.state, metrics))
        return float(metrics["loss"])


# ---------------------------------------------------------------------------------------------
# Minimal JAX (experiments/minimal)


class MinimalRunner:
    """The same model and optimizer as one plain JAX program, lmfuse's schedule included."""

    def __init__(self, model: str, batch: int):
        import jax
        import optax
        from minimal import minimal_lstm, minimal_transformer

        self.jax = jax
        m = MODELS[model]
        key = jax.random.key(0)
        schedule = optax.warmup_cosine_decay_schedule(0.0, OPTIM["lr"], 10, 100_000)
        settings = (OPTIM["b1"], OPTIM["b2"], OPTIM["eps"], OPTIM["weight_decay"], OPTIM["clip"])
        if model == "transformer":
            cfg = minimal_transformer.Config(VOCAB, m["emb_dim"], m["num_layers"], m["num_heads"],
                                             m["mlp_dim"], SEQ, positions="learned", activation="gelu")
            self.params = minimal_transformer.init_params(key, cfg)
            tx = minimal_transformer.optimizer(schedule, *settings)
            self.train_step = minimal_transformer.make_train_step(cfg, tx)
        else:
            self.params = minimal_lstm.init_params(key, VOCAB, m["emb_dim"], m["hidden_dim"],
                                                   m["num_layers"])
            tx = minimal_lstm.optimizer(schedule, *settings)
            self.train_step = minimal_lstm.make_train_step(tx)
        self.opt_state = tx.init(self.params)
        self.batches = random_batches(batch)
        self.tokens_per_step = batch * SEQ
        self.num_params = sum(x.size for x in jax.tree.leaves(self.params))
        self.index = 0
        self.versions = {"jax": jax.__version__}
        self.threads = len(os.sched_getaffinity(0))

    def steps(self, k: int) -> float:
        loss = None
        for _ in range(k):
            batch = self.batches[self.index % NUM_BATCHES]
            self.index += 1
            self.params, self.opt_state, loss = self.train_step(
                self.params, self.opt_state, batch["inputs"], batch["targets"])
        self.jax.block_until_ready((self.params, self.opt_state, loss))
        return float(loss)


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_models():
    """The PyTorch modules, defined lazily so the parent process never imports torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, emb: int, heads: int, mlp: int):
            super().__init__()
            self.heads = heads
            self.ln_1 = nn.LayerNorm(emb, eps=1e-5)
            self.qkv = nn.Linear(emb, 3 * emb)  # = lmfuse's query/key/value kernels + biases
            self.out = nn.Linear(emb, emb)
            self.ln_2 = nn.LayerNorm(emb, eps=1e-5)
            self.fc = nn.Linear(emb, mlp)
            self.proj = nn.Linear(mlp, emb)

        def forward(self, x):
            b, t, e = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(e, dim=-1)
            q, k, v = (z.view(b, t, self.heads, e // self.heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(y.transpose(1, 2).reshape(b, t, e))
            return x + self.proj(F.gelu(self.fc(self.ln_2(x))))

    class TransformerLM(nn.Module):
        def __init__(self, emb_dim, num_layers, num_heads, mlp_dim, **_):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, emb_dim)
            self.wpe = nn.Parameter(torch.randn(SEQ, emb_dim) * 0.02)
            self.blocks = nn.ModuleList(Block(emb_dim, num_heads, mlp_dim) for _ in range(num_layers))
            self.ln_f = nn.LayerNorm(emb_dim, eps=1e-5)
            nn.init.normal_(self.wte.weight, std=0.02)

        def forward(self, inputs, targets):
            x = self.wte(inputs) + self.wpe[: inputs.shape[1]]
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
            return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))

    class LstmLM(nn.Module):
        def __init__(self, emb_dim, hidden_dim, num_layers, **_):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, emb_dim)
            self.lstm = nn.LSTM(emb_dim, hidden_dim, num_layers, batch_first=True)
            self.lm_head = nn.Linear(hidden_dim, VOCAB, bias=False)
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_hh"):  # lmfuse has one bias per gate: freeze the second
                    nn.init.zeros_(p)
                    p.requires_grad_(False)

        def forward(self, inputs, targets):
            hidden, _ = self.lstm(self.wte(inputs))
            logits = self.lm_head(hidden)
            return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))

    return {"transformer": TransformerLM, "lstm": LstmLM}


class TorchRunner:
    def __init__(self, model: str, batch: int, compile_mode: str | None):
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))  # = os.cpu_count() unless --threads
        torch.manual_seed(0)
        self.torch = torch
        module = torch_models()[model](**MODELS[model])
        params = [p for p in module.parameters() if p.requires_grad]
        self.num_params = sum(p.numel() for p in params)
        # Weight decay on the same tensors as lmfuse's decay_mask: matrices except embeddings.
        decay = [p for n, p in module.named_parameters()
                 if p.requires_grad and p.ndim >= 2 and not n.startswith("wte")]
        no_decay = [p for p in params if all(p is not q for q in decay)]
        groups = [{"params": decay, "weight_decay": OPTIM["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=(OPTIM["b1"], OPTIM["b2"]),
                                     eps=OPTIM["eps"], fused=True)
        self.params = params
        self.loss_fn = torch.compile(module, mode=compile_mode) if model == "transformer" else module
        self.batches = [{k: torch.from_numpy(v).long() for k, v in b.items() if k in ("inputs", "targets")}
                        for b in random_batches(batch)]
        self.tokens_per_step = batch * SEQ
        self.index = 0
        self.versions = {"torch": torch.__version__}
        self.threads = torch.get_num_threads()

    def steps(self, k: int) -> float:
        torch = self.torch
        loss = None
        for _ in range(k):
            batch = self.batches[self.index % NUM_BATCHES]
            self.index += 1
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(batch["inputs"], batch["targets"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, OPTIM["clip"])
            self.opt.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# Workers and the parent


PEERS = ("pytorch", "minimal_jax")
LABELS = {"lmfuse": "lmfuse", "pytorch": "PyTorch", "minimal_jax": "minimal JAX"}


def make_runner(framework: str, model: str, batch: int, options: dict):
    if framework == "lmfuse":
        return JaxRunner(model, batch, options["overrides"])
    if framework == "minimal_jax":
        return MinimalRunner(model, batch)
    if not options["torch_cache"]:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    warnings.filterwarnings("ignore", message=".*dynamo_pgo force disabled.*")
    return TorchRunner(model, batch, options["compile_mode"])


def worker(conn, framework: str, model: str, batch: int, options: dict) -> None:
    """Builds one runner, times its first step as compile, then serves ('run', k) requests."""
    try:
        if options["threads"]:  # before any thread pool starts: they size themselves by this
            os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: options["threads"]]))
        runner = make_runner(framework, model, batch, options)
        start = time.perf_counter()
        loss = runner.steps(1)
        compile_s = time.perf_counter() - start
        conn.send({"num_params": runner.num_params, "compile_s": compile_s, "loss": loss,
                   "tokens_per_step": runner.tokens_per_step, "versions": runner.versions,
                   "threads": runner.threads})
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            start = time.perf_counter()
            loss = runner.steps(message[1])
            conn.send({"seconds": time.perf_counter() - start, "loss": loss})
    except Exception:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


class Worker:
    def __init__(self, ctx, framework: str, model: str, batch: int, options: dict):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker, args=(child, framework, model, batch, options),
                                   daemon=True)
        self.process.start()
        child.close()
        self.info = self._receive()

    def _receive(self) -> dict:
        reply = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"worker failed:\n{reply['error']}")
        return reply

    def run(self, k: int) -> dict:
        self.conn.send(("run", k))
        return self._receive()

    def stop(self) -> None:
        self.conn.send(("stop",))
        self.process.join(timeout=60)


def bench_model(ctx, model: str, batch: int, args, options: dict) -> dict:
    frameworks = ("lmfuse", *args.peers)
    workers = {}
    try:
        for framework in frameworks:  # one compile at a time
            workers[framework] = Worker(ctx, framework, model, batch, options)
        counts = {f: w.info["num_params"] for f, w in workers.items()}
        if len(set(counts.values())) != 1:
            raise AssertionError(f"{model}: parameter counts differ: {counts}")
        for w in workers.values():  # warm-up, untimed
            w.run(args.steps)
        tps = {f: [] for f in workers}
        losses = {}
        for repeat in range(args.repeats):
            order = frameworks[repeat % len(frameworks):] + frameworks[:repeat % len(frameworks)]
            for framework in order:
                reply = workers[framework].run(args.steps)
                tokens = workers[framework].info["tokens_per_step"] * args.steps
                tps[framework].append(tokens / reply["seconds"])
                losses[framework] = reply["loss"]
            print(f"  {model} b{batch} repeat {repeat + 1}/{args.repeats} (load "
                  f"{os.getloadavg()[0]:.1f}): "
                  + ", ".join(f"{f} {tps[f][-1]:,.0f} tok/s" for f in frameworks), flush=True)
    finally:
        for w in workers.values():
            w.stop()
    pair_ratios = {peer: [a / b for a, b in zip(tps["lmfuse"], tps[peer], strict=True)]
                   for peer in args.peers}
    return {
        "model": model,
        "batch": batch,
        "params": counts["lmfuse"],
        "tps": tps,
        "median": {f: statistics.median(v) for f, v in tps.items()},
        "compile_s": {f: w.info["compile_s"] for f, w in workers.items()},
        "losses": losses,
        "pair_ratio": {peer: statistics.median(r) for peer, r in pair_ratios.items()},
        "pair_ratios": pair_ratios,
        "versions": {k: v for w in workers.values() for k, v in w.info["versions"].items()},
        "threads": {f: w.info["threads"] for f, w in workers.items()},
    }


def cpu_model() -> str:
    from lmfuse.train.provenance import cpu_model as host_cpu  # lmfuse loads in the workers only

    return host_cpu()


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """A table cell: `value` formatted, '-' for a side that did not run."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def graded(bars: list[tuple[str, str, float | None]], ratios: dict[str, float]) -> str:
    """'PEER >= Nx: met; ...' for each (label, peer, bar) with a bar and a ratio, else '-'."""
    texts = [f"{label} >= {bar:g}x: {'met' if ratios[peer] >= bar else 'not met'}"
             for label, peer, bar in bars if bar is not None and peer in ratios]
    return "; ".join(texts) or "-"


def target_text(r: dict) -> str:
    """Each acceptance bar this row has a peer for, and whether it is met."""
    return graded([("PyTorch", "pytorch", TORCH_TARGETS.get(r["model"])),
                   ("minimal JAX", "minimal_jax", MINIMAL_TARGET)], r["pair_ratio"])


def markdown(results: list[dict], args, command: str, load: tuple[float, float]) -> str:
    versions = {k: v for r in results for k, v in r["versions"].items()}
    torch_label = {"transformer": "torch.compile", "lstm": "torch.nn.LSTM"}
    threads = results[0]["threads"]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}, {os.cpu_count()} cores "
        f"(JAX {versions.get('jax', '?')}, PyTorch {versions.get('torch', '-')}, "
        f"Python {platform.python_version()}); fp32, {args.repeats} timed runs of {args.steps} "
        f"steps per side, in rotated order, after one warm-up run; PyTorch threads = "
        f"{threads.get('pytorch', '-')}, XLA CPUs = {threads['lmfuse']}; "
        f"1-minute load average {load[0]:.1f} before / {load[1]:.1f} after (the machine is shared).",
        "",
        f"    {command}",
        "",
        "| model | params | batch x seq | lmfuse tok/s | PyTorch tok/s | PyTorch side "
        "| minimal JAX tok/s | lmfuse / PyTorch, ratio of medians | lmfuse / PyTorch, median "
        "pair ratio | target | lmfuse / minimal JAX, median pair ratio | compile lmfuse / "
        "PyTorch / minimal JAX (s) |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        m, c, pair = r["median"], r["compile_s"], r["pair_ratio"]
        torch_pair = pair.get("pytorch")
        of_medians = m["lmfuse"] / m["pytorch"] if "pytorch" in m else None
        compile_s = " / ".join(_fmt(c.get(f), ".1f") for f in ("lmfuse", *PEERS))
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} x {SEQ} | {m['lmfuse']:,.0f} "
            f"| {_fmt(m.get('pytorch'), ',.0f')} | {torch_label[r['model']]} "
            f"| {_fmt(m.get('minimal_jax'), ',.0f')} | {_fmt(of_medians, '.2f', 'x')} "
            f"| {_fmt(torch_pair, '.2f', 'x')} | {target_text(r)} "
            f"| {_fmt(pair.get('minimal_jax'), '.2f', 'x')} | {compile_s} |"
        )
    ran = [f for f in ("lmfuse", *PEERS) if f in results[0]["tps"]]
    lines += ["", f"Per-run tokens/s ({'; '.join(LABELS[f] for f in ran)}):", ""]
    for r in results:
        runs = "; ".join(", ".join(f"{x:,.0f}" for x in r["tps"][f]) for f in ran)
        lines.append(f"- {r['model']} batch {r['batch']}: {runs}")
    return "\n".join(lines)


def block_key(args) -> str:
    """Names the generated block, so runs with other settings keep their own table."""
    parts = [f"threads={args.threads or 'all'}"] + [o.replace(" ", "") for o in args.override]
    if args.compile_mode:
        parts.append(f"compile_mode={args.compile_mode}")
    if args.batches:
        parts.append(f"batches={args.batches}")
    return " ".join(parts)


def write_benchmarks(path: Path, key: str, block: str) -> None:
    """Replaces this key's generated block inside the section (creating either as needed)."""
    write_generated_block(path, SECTION, "bench_train", key, block)


def write_generated_block(path: Path, section: str, script: str, key: str, block: str) -> None:
    """Replaces the block between `<!-- {script}:begin {key} -->` and its end marker inside
    `section` of a markdown file, creating the block, the section or the file as needed.
    Shared by the benchmark scripts; each keeps its own section and markers."""
    begin, end = f"<!-- {script}:begin {key} -->", f"<!-- {script}:end {key} -->"
    generated = f"{begin}\n{block}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + generated + rest.split(end, 1)[1]
    elif section in text:
        head, rest = text.split(section, 1)
        nxt = rest.find("\n## ")  # the end of this section
        body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
        text = head + section + body.rstrip("\n") + f"\n\n{generated}\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{generated}\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: --steps 2 --repeats 2, no write")
    parser.add_argument("--steps", type=int, default=None, help="train steps per timed run (default 10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 7)")
    parser.add_argument("--models", default="transformer,lstm", help="comma list of transformer,lstm")
    parser.add_argument("--batches", default="",
                        help="comma list of batch sizes, each model at each (default: the model's "
                             "own, transformer 16, lstm 32)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma list of what lmfuse is timed against (default {','.join(PEERS)})")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="lmfuse config override, e.g. model.hoist_input_projection=False")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin every side to the first N CPUs (default: all, os.cpu_count())")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    parser.add_argument("--torch-cache", action="store_true",
                        help="let torch.compile reuse its on-disk caches (default: cold compile)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write the table into BENCHMARKS.md (default: yes unless --quick)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"),
                        help="markdown file to update (default: BENCHMARKS.md at the repo root)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 10)
    args.repeats = args.repeats or (2 if args.quick else 7)
    write = (not args.quick) if args.write is None else args.write
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    args.peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if not args.peers or set(args.peers) - set(PEERS):
        parser.error(f"--peers: choose one or more of {', '.join(PEERS)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: a comma list of integers, got {args.batches!r}")
    if any(b < 1 for b in batches):
        parser.error("--batches: batch sizes must be positive")

    options = {"overrides": args.override, "compile_mode": args.compile_mode,
               "torch_cache": args.torch_cache, "threads": args.threads}
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["experiments/bench_train.py", *(sys.argv[1:] if argv is None else argv)])
    ctx = mp.get_context("spawn")
    load_before = os.getloadavg()[0]
    results = []
    for model in models:
        for batch in batches or [MODELS[model]["batch"]]:
            print(f"{model} batch {batch}: compiling lmfuse, then "
                  f"{', '.join(LABELS[p] for p in args.peers)} ...", flush=True)
            results.append(bench_model(ctx, model, batch, args, options))

    load = (load_before, os.getloadavg()[0])
    print()
    print(f"{'model':<12}{'batch':>6}{'params':>12}" + "".join(
        f"{LABELS[f] + ' tok/s':>19}" for f in ("lmfuse", *args.peers))
        + "".join(f"{'lmfuse/' + LABELS[p]:>21}" for p in args.peers))
    for r in results:
        m = r["median"]
        print(f"{r['model']:<12}{r['batch']:>6}{r['params']:>12,}"
              + "".join(f"{m[f]:>19,.0f}" for f in ("lmfuse", *args.peers))
              + "".join(f"{r['pair_ratio'][p]:>20.2f}x" for p in args.peers))
        print(f"{'':<18}compile s: " + ", ".join(
            f"{LABELS[f]} {s:.1f}" for f, s in r["compile_s"].items())
            + "; last loss: " + ", ".join(f"{LABELS[f]} {x:.3f}" for f, x in r["losses"].items()))
    print("(ratios: medians of the per-repeat tokens/s ratios; below 1.0x lmfuse is slower)")
    print(f"1-minute load average before / after: {load[0]:.2f} / {load[1]:.2f}")
    print(f"command: {command}")
    if write:
        write_benchmarks(Path(args.output), block_key(args), markdown(results, args, command, load))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
