"""Minimal JAX reference programs: the math of lmfuse's models with nothing around it.

    minimal_transformer.py   pre-LN GPT-style LM (learned positions or RoPE, tied head):
                             init, forward, a jitted AdamW train step, a KV-cache decode loop
    minimal_lstm.py          multi-layer LSTM LM (untied head): init, forward, train step,
                             a carried-state decode loop

Each file is one plain program: no Flax, no sharding rules, no config system; optax for the
optimizer. `from_lmfuse(params)` converts an lmfuse param tree into the program's own, so
tests can check that both compute the same function (tests/experiments/
test_minimal_reference.py), and the benchmarks (`experiments/bench_train.py`,
`experiments/bench_decode.py`) time lmfuse against them: the ratio is the framework's overhead.
"""
