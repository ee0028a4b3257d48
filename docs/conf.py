"""Sphinx configuration: the API reference, the pages in docs/, the README and the notebooks.

Build (warnings are errors), from the repository root::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebooks are rendered from their committed outputs, never executed: a
step below copies ``notebooks/`` into ``docs/_notebooks`` (ignored by git)
before Sphinx reads the sources.
"""

import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import optax_split  # noqa: E402

project = "optax-split"
copyright = "the optax-split authors"  # noqa: A001
release = optax_split.__version__

extensions = [
    "myst_nb",  # Markdown (myst-parser) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Notebooks: rendered with their committed outputs.
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath"]
# The README's code blocks are doctests; show them as Python.
myst_heading_anchors = 3

autosummary_generate = True
# A class page is its docstring and public methods, without autosummary's
# tables of every inherited tuple method.
templates_path = ["_templates"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# NamedTuple fields are documented in the class docstring's Attributes section
# (napoleon makes them attribute entries); autodoc's own "Alias for field
# number N" entries are skipped below.
napoleon_use_ivar = False

html_theme = "furo"
html_title = f"optax-split {release}"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
suppress_warnings = [
    # The README links to repository folders (results/, benchmarks/), which
    # are not pages of this site; they stay plain links.
    "myst.xref_missing",
    # Pages may start at a level-2 heading (docs/experiments.md does): their
    # first heading is their title.
    "myst.header",
]


def _copy_notebooks() -> None:
  target = DOCS / "_notebooks"
  shutil.rmtree(target, ignore_errors=True)
  target.mkdir()
  for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(path, target / path.name)
  # The notebooks' README is their index page; a hidden toctree lists them all.
  index = (ROOT / "notebooks" / "README.md").read_text()
  index += "\n```{toctree}\n:hidden:\n:glob:\n\n*\n```\n"
  (target / "index.md").write_text(index)


def _check_api_page() -> None:
  """Every public name must be on the API page; a missing one fails the build."""
  page = (DOCS / "api.md").read_text()
  missing = [name for name in optax_split.__all__ if f"\n   {name}\n" not in page]
  if missing:
    raise RuntimeError(f"docs/api.md does not list {missing}: add them to a section there.")


_copy_notebooks()
_check_api_page()


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
  """NamedTuple fields are documented in their class's Attributes section already."""
  del app, what, name, options
  doc = getattr(obj, "__doc__", None) or ""
  return True if doc.startswith("Alias for field number") else skip


def setup(app):
  app.connect("autodoc-skip-member", _skip_namedtuple_fields)
