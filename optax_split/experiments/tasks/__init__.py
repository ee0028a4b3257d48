"""The tasks, by name: ``make("adding", length=20)``."""

from optax_split.experiments.tasks import adding, cifar2, deep_mlp, grokking, lm
from optax_split.experiments.tasks.base import Task

_FACTORIES = {"adding": adding.adding, "deep_mlp": deep_mlp.deep_mlp,
              "cifar2": cifar2.cifar2, "grokking": grokking.grokking, "lm": lm.lm,
              "lm_gpt": lm.lm_gpt}
NAMES = tuple(_FACTORIES)


def make(name: str, **options) -> Task:
  """Builds the task ``name`` with its ``options`` (sizes, data paths).

  Example:
    >>> print(make("adding", length=5, hidden=2, eval_size=4).settings["length"])
    5
  """
  if name not in _FACTORIES:
    raise ValueError(f"Unknown task {name!r}. Choose from {', '.join(NAMES)}.")
  return _FACTORIES[name](**options)


__all__ = ["NAMES", "Task", "make"]
