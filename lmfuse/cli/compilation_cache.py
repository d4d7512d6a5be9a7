"""JAX's persistent compilation cache, on for every lmfuse command and study.

A command compiles the same programs each time it runs on the same model: the train step,
the eval step, beam search once per batch width. Kept on disk, a later run loads them instead
of compiling; on the `make demo` encoder-decoder that is about 20 s of an 85 s `lmfuse eval`.
The cache key is the program itself (with the compiler's version and flags), so a loaded
program computes exactly what a compiled one would, and a damaged entry is compiled again
(JAX warns and goes on).

    LMFUSE_COMPILATION_CACHE=DIR    keep the programs in DIR (default ~/.cache/lmfuse/jax)
    LMFUSE_COMPILATION_CACHE=off    compile every time
    JAX_COMPILATION_CACHE_DIR=DIR   JAX's own setting; when set, lmfuse leaves the cache to it
"""

from __future__ import annotations

import os

ENV = "LMFUSE_COMPILATION_CACHE"
DEFAULT_DIR = "~/.cache/lmfuse/jax"
OFF = ("", "0", "off", "none", "false")
# Smaller programs compile about as fast as they load, and would only fill the directory.
MIN_COMPILE_SECONDS = 0.5
# With a size limit JAX evicts the least recently used entries and locks the directory, so
# concurrent commands (a study and an eval) can share it.
MAX_BYTES = 2 << 30


def cache_dir() -> str | None:
    """Where lmfuse keeps compiled programs; None when it should not set the cache up."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None  # JAX reads its own variable
    value = os.environ.get(ENV, DEFAULT_DIR)
    if value.strip().lower() in OFF:
        return None
    return os.path.expanduser(value)


def enable_compilation_cache() -> str | None:
    """Turns the cache on for this process (before anything compiles); returns its directory."""
    path = cache_dir()
    if path is None:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
