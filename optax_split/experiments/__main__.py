"""``python -m optax_split.experiments compare ...``."""

from optax_split.experiments.cli import main

if __name__ == "__main__":
  main()
