"""Runs the notebooks in their fast mode under pytest (``--nbmake``).

The kernels that nbmake starts inherit this process's environment, so setting
the variable here shrinks every notebook whoever calls pytest; the committed
outputs come from a full run (see ``run_all.py``).
"""

import os

os.environ["OPTAX_SPLIT_FAST"] = "1"
