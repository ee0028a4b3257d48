"""What a task is: data, a model's loss and metric, and its default grids."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Task:
  """A training problem, as pure functions the runner can vmap and scan.

  The data travel as an argument of the compiled program (``data``), not as
  constants baked into it, so large arrays are not copied into the program.

  Attributes:
    name: The task's name on the command line.
    data: Pytree of arrays: the train, validation and test splits.
    init: ``init(key) -> params``.
    sample: ``sample(data, key) -> batch``, one training batch.
    loss: ``loss(params, batch) -> scalar`` training loss.
    evaluate: ``evaluate(params, data) -> (validation_metric, test_metric)``.
    metric: Name of the metric, e.g. ``"mse"`` or ``"accuracy"``.
    higher_is_better: Whether a larger metric is better.
    divergence_bound: A run diverged if its loss was ever non-finite or its
      final training loss (mean over the last tenth of the steps) is above this.
    rates: Default grid of effective learning rates for SGD-like optimizers.
    adaptive_rates: Default grid of learning rates for Adam-like optimizers.
    steps: Default number of training steps.
    eval_every: Steps between evaluations on the validation and test sets.
    weight_decay: Decoupled weight decay given to every optimizer (an
      optimizer that tunes its own, ``adam:weight_decay=0/0.1``, overrides it).
    adam_b2: The second-moment decay of every Adam-like optimizer.
    schedule: Optional ``schedule(steps) -> multiplier``: the shape of the rate
      over a run of ``steps`` (warm-up, decay), multiplying every optimizer's
      rate; None keeps the rate constant.
    target: Optional validation metric to reach; the report then gives the
      steps each optimizer needed to reach it.
    settings: What the report prints about the task (sizes, options).
  """

  name: str
  data: Any
  init: Callable[[jax.Array], Any]
  sample: Callable[[Any, jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  evaluate: Callable[[Any, Any], tuple[jax.Array, jax.Array]]
  metric: str
  higher_is_better: bool
  divergence_bound: float
  rates: tuple[float, ...]
  adaptive_rates: tuple[float, ...]
  steps: int
  eval_every: int
  weight_decay: float = 0.0
  adam_b2: float = 0.999
  schedule: Callable[[int], Callable[[Any], Any]] | None = None
  target: float | None = None
  settings: dict = dataclasses.field(default_factory=dict)
