"""Executes the notebooks in full and saves them with their outputs.

Run from the repository root::

    python notebooks/run_all.py                 # every notebook
    python notebooks/run_all.py notebooks/01_anatomy_of_a_split.ipynb

The fast mode is switched off (``OPTAX_SPLIT_FAST`` is removed from the
kernel's environment) and matplotlib draws inline, so the saved notebooks carry
the plots of the full run.
"""

import os
import pathlib
import sys
import time

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parent


def full_run_env(environ: dict[str, str]) -> dict[str, str]:
  """The kernel's environment: ``environ`` without the fast mode or a backend override.

  Example:
    >>> full_run_env({"OPTAX_SPLIT_FAST": "1", "MPLBACKEND": "Agg", "HOME": "/home/me"})
    {'HOME': '/home/me'}
  """
  env = dict(environ)
  env.pop("OPTAX_SPLIT_FAST", None)
  env.pop("MPLBACKEND", None)  # an Agg backend here would keep the plots out of the notebook
  return env


def execute(path: pathlib.Path, timeout: int = 1800) -> float:
  """Executes one notebook in place with the ``python3`` kernel; returns the seconds taken."""
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=timeout, kernel_name="python3",
      resources={"metadata": {"path": str(path.parent)}},
  )
  start = time.perf_counter()
  client.execute(env=full_run_env(dict(os.environ)))
  nbformat.write(notebook, path)
  return time.perf_counter() - start


def main(paths: list[str]) -> None:
  for path in [pathlib.Path(p) for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb")):
    print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
