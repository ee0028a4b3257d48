"""Runs into the same folder: a lock, and the rows of an earlier run kept beside the new ones."""

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from optax_split.experiments.results import Settings, Summary
from optax_split.experiments.tasks.base import Task


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
  """Holds an exclusive lock on ``folder``, so that runs into it merge one at a time.

  Example:
    >>> import tempfile
    >>> with locked(Path(tempfile.mkdtemp())):
    ...   print("merging")
    merging
  """
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / ".lock", "w") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


class OtherSettings(ValueError):
  """An earlier ``results.json`` was made with other settings: its rows cannot join a new run."""


def _differences(earlier: dict, now: dict) -> list[str]:
  return [f"{key} {earlier.get(key, 'unset')!r}, now {now.get(key, 'unset')!r}"
          for key in dict.fromkeys([*earlier, *now]) if earlier.get(key) != now.get(key)]


def _earlier(path: Path, task: Task, settings: Settings) -> dict | None:
  """The earlier ``results.json`` at ``path``, None if there is none.

  Raises:
    OtherSettings: It was made with other settings. Its rows are not
      comparable with a new run's, and writing over them would lose them.
  """
  if not path.exists():
    return None
  earlier = json.loads(path.read_text())
  differ = (_differences(earlier["settings"], settings.to_json())
            + _differences(earlier["task_settings"], json.loads(json.dumps(task.settings))))
  if differ:
    raise OtherSettings(
        f"{path} was made with other settings ({'; '.join(differ)}), so its rows cannot join "
        "this run's. Write to another folder (--out) or move that one away.")
  return earlier


def trained(path: Path, task: Task, settings: Settings) -> set[str]:
  """The optimizers of the earlier ``results.json`` at ``path`` (raises :class:`OtherSettings`)."""
  earlier = _earlier(path, task, settings)
  return set() if earlier is None else {s["optimizer"] for s in earlier["optimizers"]}


def with_earlier(path: Path, task: Task, settings: Settings, summaries: list[Summary],
                 command: str, drop: list[str]) -> tuple[list[Summary], str]:
  """``summaries`` after those of the earlier ``results.json`` at ``path``, if there is one.

  An optimizer run again replaces its earlier summary, and the earlier rows
  named in ``drop`` go; the commands of both runs are kept, one a line. An
  earlier file made with other settings raises :class:`OtherSettings`.
  """
  earlier = _earlier(path, task, settings)
  if earlier is None:
    return summaries, command
  gone = {s.optimizer for s in summaries} | set(drop)
  kept = [Summary.from_json(s, higher_is_better=task.higher_is_better)
          for s in earlier["optimizers"] if s["optimizer"] not in gone]
  commands = dict.fromkeys([*earlier["command"].splitlines(), command])
  return kept + summaries, "\n".join(commands)
