"""Test-session settings shared by every test folder.

The notebooks run in their fast mode under pytest (``--nbmake``): the kernels
that nbmake starts inherit this process's environment, so setting the variable
here shrinks every notebook whoever calls pytest. The committed outputs come
from a full run (``python notebooks/run_all.py``).
"""

import os

os.environ["OPTAX_SPLIT_FAST"] = "1"
