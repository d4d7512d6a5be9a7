"""Beam search over many batches, with the prompts that are done dropped as it goes.

A batch's search runs until its last prompt is done, and every row pays for every step: in
batches of 64 verses sorted by source length, about a third of the rows' steps on a Bible
test split went to prompts already done. A program has fixed shapes, so a row cannot leave
it; but the search can stop and go on (`beam.search_stage`: one program per cache phase, 16,
32, 64, ... new tokens, its stopping point a traced argument), and whenever it stops the host
can choose the rows it goes on with.

`search_batches` runs a window of batches `every` new tokens at a time (and to each cache
phase's end). After each run it keeps the n-best list of every prompt that is done, and when
the prompts still running fit in fewer batches than hold them, gathers them from all the
window's carries into as few full batches as they fill; otherwise the batches go on as they
are (a gather copies the whole decode state). Rows are independent in the search (each
prompt's limit and early exit are its own: `beam.rows_done`), and a done row's n-best list can
no longer change, so every prompt gets what `beam_search` gives it in its own batch (tokens
the same; XLA:CPU rounds an RNN's products a little differently by a row's place in its
batch, so its scores may differ in the last bits, as with the rows of one batch permuted).
The batches keep their row count, so one program per cache phase serves them all; a partly
filled batch is padded with a copy of a done row, which never keeps a loop running.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmfuse.decode import beam_state
from lmfuse.decode.beam import (
    NEG_INF,
    BeamOutput,
    Carry,
    grow_stage,
    search_stage,
    stage_lengths,
)
from lmfuse.decode.cache_phases import FIRST_PHASE_TOKENS, phase_layout
from lmfuse.decode.step import Batch, DecodeStep

WINDOW = 8  # batches whose running prompts are pooled: their carries are held at once
EVERY = 8  # new tokens between two looks for done rows (a stage's end is always one)


def search_batches(decoder: DecodeStep, params: Any,
                   batches: Sequence[tuple[Batch, np.ndarray]], *, window: int = WINDOW,
                   every: int = EVERY, **options: Any) -> Iterator[BeamOutput]:
    """`beam_search(decoder, params, batch, row_limits=limits, **options)` for each
    (batch, limits) of `batches`, in order, as NumPy arrays; the batches must share their
    shapes. Done prompts leave every `every` new tokens (0: at the cache phases' ends only;
    module docstring); `window` batches are pooled at a time."""
    if not batches:
        return
    layout = _row_layout(decoder, params, batches[0][0], options)
    for start in range(0, len(batches), window):
        yield from _search_window(decoder, params, batches[start : start + window], layout,
                                  options, every)


def _search_window(decoder: DecodeStep, params: Any, batches: Sequence[tuple[Batch, np.ndarray]],
                   layout: Any, options: dict, every: int) -> list[BeamOutput]:
    rows = batches[0][0]["prompt"].shape[0]
    results: list[dict[str, np.ndarray]] = [{} for _ in batches]
    # Each running batch: [batch, limits, carry, origin, stage of its carry]; origin[r] =
    # (window batch, row), or None for padding and for rows already kept.
    running: list[list] = [[batch, jnp.asarray(limits), None, [(j, r) for r in range(rows)], 0]
                           for j, (batch, limits) in enumerate(batches)]
    stops = stop_points(options["max_new_tokens"],
                        options.get("first_phase_tokens", FIRST_PHASE_TOKENS), every)
    for n, (stage, until) in enumerate(stops):
        for entry in running:
            if entry[2] is not None and entry[4] < stage:
                entry[2] = grow_stage(decoder, params, entry[0], stage, entry[2],
                                      row_limits=entry[1], **options)
            entry[4] = stage
        stepped = [search_stage(decoder, params, batch, stage, carry, until, row_limits=limits,
                                **options) for batch, limits, carry, _, _ in running]
        last = n == len(stops) - 1
        still: list[tuple[int, int]] = []  # (running batch, row) not done yet
        filler = None
        for index, ((_, done), entry) in enumerate(zip(stepped, running, strict=True)):
            entry[2] = stepped[index][0]
            done = np.asarray(done) | last  # (read here: every batch was dispatched above)
            output = None
            for row, source in enumerate(entry[3]):
                if not done[row]:
                    still.append((index, row))
                    continue
                filler = filler or (index, row)
                if source is not None:
                    output = output or _host_output(entry[2])
                    _keep(results[source[0]], source[1], output, row, rows)
                    entry[3][row] = None
        holding = sorted({index for index, _ in still})
        if len(holding) > -(-len(still) // rows):  # the running rows fit in fewer batches
            running = [_gather(running, picks, layout, filler) for picks in _fill(still, rows)]
        else:
            running = [running[index] for index in holding]
        if not running:
            break
    return [BeamOutput(r["tokens"], r["scores"], r["logprobs"], r["finished"]) for r in results]


def stop_points(max_new_tokens: int, first_phase_tokens: int, every: int
                ) -> list[tuple[int, int]]:
    """(stage, new tokens) where the host looks for done rows: every `every` tokens within
    each stage and at its end."""
    stops, start = [], 0
    for stage, end in enumerate(stage_lengths(max_new_tokens, first_phase_tokens)):
        points = range(start + every, end, every) if every > 0 else ()
        stops += [(stage, point) for point in points] + [(stage, end)]
        start = end
    return stops


def _fill(still: list[tuple[int, int]], rows: int) -> list[list[tuple[int, int]]]:
    """The running rows in batches of `rows` (the last one partly filled)."""
    return [still[start : start + rows] for start in range(0, len(still), rows)]


def _gather(stepped: list, picks: list[tuple[int, int]], layout: Any,
            filler: tuple[int, int] | None) -> list:
    """A running batch of the rows `picks` (padded with `filler`, a done row), gathered from
    the batches, limits and carries of the running batches `stepped`; `layout`: the state's
    row axes."""
    rows = stepped[0][0]["prompt"].shape[0]
    origin = [stepped[i][3][r] for i, r in picks] + [None] * (rows - len(picks))
    picks = picks + [filler] * (rows - len(picks))
    sources = sorted({i for i, _ in picks})
    offset = {i: n * rows for n, i in enumerate(sources)}
    index = jnp.asarray([offset[i] + r for i, r in picks], jnp.int32)
    carries = [stepped[i][2] for i in sources]
    # Leaves without rows (the step count, a 0-d cache index) from a running row's carry: a
    # batch all of whose rows were done (the filler's) may have stopped earlier.
    running = sources.index(picks[0][0])

    def take(axis: int, *leaves: jax.Array) -> jax.Array:
        if axis < 0:
            return leaves[running]
        return _take(list(leaves), index, axis)

    def take_beam_rows(leaves: list[jax.Array]) -> jax.Array:  # [B*K, ...]: K rows a prompt
        shape = leaves[0].shape
        return _take([x.reshape(rows, -1, *shape[1:]) for x in leaves], index, 0).reshape(shape)

    def field(name: str) -> jax.Array:
        return _take([getattr(c, name) for c in carries], index, 0)

    carry = Carry(
        carries[running].step,  # every running row has written as many tokens
        take_beam_rows([c.logits for c in carries]),
        jax.tree.map(take, layout, *[c.state for c in carries]),
        None if carries[0].seen is None else take_beam_rows([c.seen for c in carries]),
        *(field(name) for name in Carry._fields[4:]))
    batch = jax.tree.map(lambda *x: _take(list(x), index, 0), *[stepped[i][0] for i in sources])
    limits = _take([stepped[i][1] for i in sources], index, 0)
    return [batch, limits, carry, origin, stepped[picks[0][0]][4]]


def _take(parts: list[jax.Array], index: jax.Array, axis: int) -> jax.Array:
    whole = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)
    return jnp.take(whole, index, axis=axis)


def _row_layout(decoder: DecodeStep, params: Any, batch: Batch, options: dict) -> Any:
    """The row axis of each state leaf for batches shaped like `batch`: per-beam leaves
    [K, B, ...] have it at 1, shared ones [B, ...] at 0, 0-d ones none (-1; `beam_state`)."""
    first_phase = options.get("first_phase_tokens", FIRST_PHASE_TOKENS)
    _, _, state = phase_layout(decoder, params, batch, options["max_new_tokens"], first_phase)
    per_beam = beam_state.per_beam_leaves(decoder, params, state, batch["prompt"].shape[0])
    return jax.tree.map(lambda leaf, own: 1 if own else (0 if leaf.ndim else -1), state, per_beam)


def _host_output(carry: Carry) -> dict[str, np.ndarray]:
    """The n-best lists `carry` holds, on the host (`beam.search_output`)."""
    scores, logprobs, tokens, flags = jax.device_get(
        (carry.fin_scores, carry.fin_logprobs, carry.fin_seqs, carry.fin_flags))
    return {"tokens": tokens, "scores": scores, "finished": flags,
            "logprobs": np.where(flags, logprobs, np.float32(NEG_INF))}


def _keep(result: dict[str, np.ndarray], row: int, output: dict[str, np.ndarray], source: int,
          rows: int) -> None:
    for name, values in output.items():
        if name not in result:
            result[name] = np.zeros((rows, *values.shape[1:]), values.dtype)
        result[name][row] = values[source]
