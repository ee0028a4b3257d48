"""Arithmetic on hyperparameters that may be numbers or optax schedules."""

from collections.abc import Callable
from typing import Any

import optax


def map_schedules(
    fn: Callable[..., Any], *values: optax.ScalarOrSchedule
) -> optax.ScalarOrSchedule:
  """``fn`` of numbers or schedules alike: a number when every value is one, else a schedule.

  A schedule is any callable of the step count, as optax takes them; the
  result of mixing numbers and schedules is the schedule
  ``count -> fn(v(count) or v, ...)``. It is how the presets derive
  ``eta_local = local_fraction * learning_rate`` and the global branch's weight
  ``1 + alpha``, whichever of them is scheduled.

  Args:
    fn: A function of as many numbers as ``values``.
    *values: Numbers (or arrays) and schedules.

  Returns:
    ``fn(*values)``, or a schedule of the step count.

  Example:
    >>> import optax
    >>> import optax_split as osp
    >>> print(osp.map_schedules(lambda a, b: a * b, 0.01, 3.0))
    0.03
    >>> rate = osp.map_schedules(lambda a, b: a * b, 0.01, optax.linear_schedule(2.0, 0.0, 10))
    >>> print(round(float(rate(5)), 6))
    0.01
  """
  if not any(callable(v) for v in values):
    return fn(*values)

  def schedule(count):
    return fn(*(v(count) if callable(v) else v for v in values))

  return schedule
