"""Experiments: train small Flax models with each optimizer and compare them.

Needs the ``examples`` extra (Flax, matplotlib, tqdm, scikit-learn); the core
package never imports this subpackage. Run ``optax-split compare --help`` or
``python -m optax_split.experiments compare --help``.

In layers, each using only those above it and public ``optax_split`` API:

- registry: :mod:`.optimizers` (typed optimizer specs), :mod:`.tasks`;
- compute: :mod:`.runner` (the vmapped, scanned training program),
  :mod:`.metrics` (divergence, spikes, learning-rate sensitivity),
  :mod:`.results` (typed summaries that read and write JSON), :mod:`.verdict`
  (ranks, paired tests, resolution);
- rendering: :mod:`.tables` (text and Markdown), :mod:`.plots` (PNG), and
  :mod:`.report`, which writes them to files;
- the command line: :mod:`.cli` parses and dispatches to :mod:`.commands`,
  which use :mod:`.suite` (the suite's configuration), :mod:`.jobs` (training
  optimizers side by side), :mod:`.cache` (JAX's compilation cache) and
  :mod:`.merge` (runs into one folder).
"""
