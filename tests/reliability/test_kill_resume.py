"""kill -9 at any moment, inside a checkpoint save or not, then resume: the same final state.

Runs here save a checkpoint every step (a third of the random trials every 4th step), so
Orbax's async save (to `checkpoints/N.orbax-checkpoint-tmp`, renamed to `checkpoints/N` when
committed) takes most of each step's wall time, and a kill at a random moment usually lands
inside one; there is no test hook, only frequent saves and a fast poll of the checkpoint
folder. A temporary directory begun by the killed process that is still there after it died
proves that the kill cut a save (`training_runs.saves_in_flight`). After each kill the next run
must resume from the newest complete checkpoint, and the last run must end with params,
optimizer state, step and data-iterator state bitwise equal to those of one uninterrupted run
(the module's reference).

All runs share a JAX compilation cache (in the module's temporary folder) to save about four
seconds of compiling per run; kills come only after a run has saved, so after its compiles.
The default run holds three kill/resume trials; `make test-slow` runs 24 more at random.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from training_runs import (
    assert_bitwise_equal,
    complete_steps,
    final_state,
    finished_items,
    kill9,
    resumed_from,
    saves_in_flight,
    start_training,
    train,
    wait_for,
)

STEPS = 16
SETTINGS = {"train.steps": STEPS, "train.checkpoint_every": 1, "train.log_every": 4}
SLOW_TRIALS = 24


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> dict[str, str]:
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def saving(workdir: Path, step: int) -> bool:
    """Whether the save of `step` or a later one has begun (in flight, or done)."""
    return max([*saves_in_flight(workdir), *complete_steps(workdir), 0]) >= step


@pytest.fixture(scope="module")
def reference(text_corpus, tmp_path_factory, compile_cache) -> dict:
    """One uninterrupted run: its final state, and the seconds from its first save to its
    last one, the span in which random kills land."""
    workdir = tmp_path_factory.mktemp("reference")
    log = workdir.parent / "reference.log"
    process = start_training(workdir, text_corpus, env=compile_cache, log=log, **SETTINGS)
    wait_for(lambda: saving(workdir, 1), process, interval=0.002)
    first_save = time.monotonic()
    wait_for(lambda: saving(workdir, STEPS), process, interval=0.002)
    span = time.monotonic() - first_save
    assert process.wait(timeout=240) == 0, log.read_text()[-2000:]
    assert complete_steps(workdir)[-1] == STEPS and not saves_in_flight(workdir)
    return {"state": final_state(workdir), "saving_seconds": span}


class Trial:
    """One workdir trained by successive runs, some killed with SIGKILL, each run resuming."""

    def __init__(self, workdir: Path, corpus: dict[str, str], env: dict[str, str], **settings):
        self.workdir, self.corpus, self.env = workdir, corpus, env
        self.settings = {**SETTINGS, **settings}
        self.kills: list[dict] = []  # one record per run sent SIGKILL (it may have ended)

    def start(self):
        """Starts the next run; returns (process, its start on the wall clock, its log)."""
        log = self.workdir.parent / f"{self.workdir.name}.run{len(self.kills)}.log"
        started = time.time_ns()
        process = start_training(self.workdir, self.corpus, env=self.env, log=log, **self.settings)
        return process, started, log

    def wait_for_a_save(self, process, started: int) -> bool:
        """Until this run has begun a save (so it compiled, restored and trained a step)."""
        newest = max(complete_steps(self.workdir), default=0)
        return wait_for(lambda: max(complete_steps(self.workdir), default=0) > newest
                        or saves_in_flight(self.workdir, started), process,
                        until_exit=True, interval=0.01)

    def wait_for_step(self, process, started: int, step: int, saving: bool = False) -> bool:
        """Until this run is saving step `step` or a later one (or, unless `saving`, has
        committed one), polling every millisecond."""
        def reached() -> bool:
            if max([*saves_in_flight(self.workdir, started), 0]) >= step:
                return True
            return not saving and max(complete_steps(self.workdir), default=0) >= step

        return wait_for(reached, process, until_exit=not saving, interval=0.001)

    def kill(self, process, started: int, log: Path, expected_start: int | None,
             how: str = "") -> dict:
        """SIGKILL now; records where the run stood and checks where it had started from."""
        killed = kill9(process)
        in_flight = saves_in_flight(self.workdir, started)
        record = {
            "how": how,
            "killed": killed,
            "in_save": bool(in_flight) and killed,
            "in_flight": sorted(in_flight),
            "finished_items": [finished_items(p) for p in in_flight.values()],
            "complete": complete_steps(self.workdir),
        }
        if killed:
            assert process.returncode < 0, process.returncode
        else:  # it finished before the kill came
            assert process.returncode == 0, log.read_text()[-2000:]
        self.check_start(log.read_text(), expected_start)
        if record["in_save"]:
            # Orbax commits one save at a time: the one in flight is newer than every complete one.
            assert len(in_flight) == 1 and min(in_flight) > max(record["complete"], default=0)
        self.kills.append(record)
        return record

    def check_start(self, output: str, expected: int | None) -> None:
        """A run resumes from the newest complete checkpoint there was; none was damaged."""
        assert "damaged" not in output, output[-2000:]
        if expected is None:
            assert resumed_from(output) is None, output[-2000:]
        elif expected < STEPS:
            assert resumed_from(output) == expected, output[-2000:]

    def newest(self) -> int | None:
        return max(complete_steps(self.workdir), default=None)

    def finish(self) -> dict:
        """Runs to the end (resuming once more) and returns the final state."""
        expected = self.newest()
        result = train(self.workdir, self.corpus, env=self.env, **self.settings)
        assert result.returncode == 0, result.stderr[-2000:]
        self.check_start(result.stdout + result.stderr, expected)
        # Every unfinished save was redone by a later run (Orbax replaces the leftover).
        assert complete_steps(self.workdir)[-1] == STEPS
        assert not saves_in_flight(self.workdir), sorted(saves_in_flight(self.workdir))
        return final_state(self.workdir)


def test_a_kill_inside_a_save_resumes_from_the_last_complete_checkpoint(
        text_corpus, tmp_path, compile_cache, reference):
    trial = Trial(tmp_path / "workdir", text_corpus, compile_cache)
    # Kill as soon as the save of step 6 or a later one is seen in flight. A save lasts some
    # 100-200 ms and the kill follows within a millisecond or two, so it nearly always lands
    # inside; if that save committed in between, the resumed run is caught the same way (at
    # most 3 tries).
    for _ in range(3):
        expected = trial.newest()
        process, started, log = trial.start()
        trial.wait_for_step(process, started, 6, saving=True)
        record = trial.kill(process, started, log, expected)
        assert record["killed"]
        if record["in_save"]:
            break
    assert record["in_save"], trial.kills
    in_flight = record["in_flight"][0]
    assert in_flight not in record["complete"]
    state = trial.finish()
    assert_bitwise_equal(state, reference["state"])
    # The unfinished save was left behind and ignored: the resumed run started from the newest
    # complete checkpoint, before the step whose save was cut, and saved that step itself.
    assert record["complete"][-1] < in_flight <= STEPS


def run_random_trial(seed: int, corpus, workdir: Path, env: dict, reference: dict) -> list[dict]:
    """Kills 1 or 2 runs at random: at a random moment of their saving span ('time'), or up to
    0.2 s after the save of a random step has begun ('step'); then finishes and compares with
    the reference. A third of the trials save every 4th step instead of every step, so kills also
    fall between saves and the resumed run replays several steps."""
    rng = random.Random(seed)
    trial = Trial(workdir, corpus, env, **{"train.checkpoint_every": rng.choice([1, 1, 4])})
    for _ in range(rng.choice([1, 2])):
        expected = trial.newest()
        if expected == STEPS:
            break
        process, started, log = trial.start()
        how = rng.choice(["time", "step"])
        if trial.wait_for_a_save(process, started):
            if how == "time":  # within the time the steps left took the reference
                left = (STEPS - (expected or 0)) / STEPS
                time.sleep(rng.uniform(0.0, left * reference["saving_seconds"]))
            elif trial.wait_for_step(process, started, rng.randint((expected or 0) + 1, STEPS)):
                time.sleep(rng.uniform(0.0, 0.2))  # somewhere in that save, or just past it
        trial.kill(process, started, log, expected, how)
    assert_bitwise_equal(trial.finish(), reference["state"])
    return trial.kills


@pytest.mark.parametrize("seed", [2, 6])
def test_random_kills_then_resume_end_bitwise_equal(seed, text_corpus, tmp_path, compile_cache,
                                                   reference):
    kills = run_random_trial(seed, text_corpus, tmp_path / "workdir", compile_cache, reference)
    assert kills and kills[0]["killed"], kills


@pytest.mark.slow
def test_many_random_kills_all_resume_bitwise_equal(text_corpus, tmp_path, compile_cache,
                                                    reference):
    kills = []
    for seed in range(100, 100 + SLOW_TRIALS):
        kills += run_random_trial(seed, text_corpus, tmp_path / f"trial{seed}", compile_cache,
                                  reference)
    interrupted = [k for k in kills if k["killed"]]
    in_save = [k for k in interrupted if k["in_save"]]
    finished = Counter(len(k["finished_items"][0]) for k in in_save)
    print(f"\n{SLOW_TRIALS} trials, {len(kills)} kills ({Counter(k['how'] for k in kills)}): "
          f"{len(interrupted)} interrupted a run, {len(in_save)} of them inside a save; items "
          f"the cut saves had finished (of 7): {dict(sorted(finished.items()))}")
    # Most kills cut a run short, and many of those a save: both paths really were taken.
    assert len(interrupted) >= 0.75 * len(kills) and len(kills) >= SLOW_TRIALS
    assert len(in_save) >= len(interrupted) / 3
