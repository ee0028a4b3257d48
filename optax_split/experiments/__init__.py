"""Experiments: train small Flax models with each optimizer and compare them.

Needs the ``examples`` extra (Flax, matplotlib, tqdm, scikit-learn); the core
package never imports this subpackage. Run ``optax-split compare --help`` or
``python -m optax_split.experiments compare --help``.
"""
