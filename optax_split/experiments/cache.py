"""JAX's persistent compilation cache for the experiments' programs."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

# Where the compiled programs are kept between runs, if set.
CACHE_ENV = "OPTAX_SPLIT_CACHE_DIR"


def cache_dir() -> Path:
  """The compilation cache folder: ``$OPTAX_SPLIT_CACHE_DIR``, else ``~/.cache/optax-split/jax``.

  ``~/.cache`` is ``$XDG_CACHE_HOME`` where that is set.

  Example:
    >>> import os
    >>> os.environ["OPTAX_SPLIT_CACHE_DIR"] = "/tmp/my-cache"
    >>> print(cache_dir())
    /tmp/my-cache
    >>> del os.environ["OPTAX_SPLIT_CACHE_DIR"]
  """
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
  return base / "optax-split" / "jax"


@contextlib.contextmanager
def compilation_cache_at(path: Path | None) -> Iterator[None]:
  """Keeps every compiled program in JAX's persistent cache at ``path`` (None: no cache).

  The experiments' programs take seconds to compile on a CPU and a second run
  of the same command compiles the same programs, so a cached run only trains.
  Small programs are cached too (no minimum compile time or size). JAX's
  previous settings are restored afterwards.

  Example:
    >>> import jax
    >>> before = jax.config.jax_compilation_cache_dir
    >>> with compilation_cache_at(Path("/tmp/my-cache")):
    ...   print(jax.config.jax_compilation_cache_dir)
    /tmp/my-cache
    >>> print(jax.config.jax_compilation_cache_dir == before)
    True
  """
  if path is None:
    yield
    return
  options = {
      "jax_compilation_cache_dir": str(path),
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": -1,
  }
  previous = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  # JAX decides once per process whether to use the cache: decide again now.
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
