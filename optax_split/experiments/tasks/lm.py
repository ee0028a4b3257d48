"""A byte-level causal transformer language model on Python's standard library.

The corpus is the source of the standard library that runs this code
(``sysconfig.get_paths()["stdlib"]``, without ``site-packages``), so every
machine has it with no download. Its ``.py`` files, sorted by path, are split
by file: of every ten, eight train, one validates, one tests. The model is
:class:`~optax_split.experiments.tasks._transformer.CausalTransformer` (pre-LN,
learned positions, no qk-LayerNorm, no z-loss), trained with a linear warm-up
and a cosine decay of the rate, so high rates destabilise it as in Wortsman
et al. (2023). The metric is the validation loss in bits per byte.

Options change the model and its training: ``init`` (Flax's LeCun default or
GPT-2's N(0, 0.02)), ``bias``, ``qk_layernorm`` and ``z_loss`` (Wortsman et
al.'s model-side fixes), the sizes, and Adam's ``adam_b2``. :func:`lm_gpt` is
the practitioners' setting: the GPT init, no biases, Adam's b2 0.95.

Different Python versions ship different sources, so numbers from two
machines are comparable only when their Python versions match.
"""

import dataclasses
import math
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_split.experiments.tasks._transformer import INITS, CausalTransformer
from optax_split.experiments.tasks.base import Task

# Uniform over the 256 byte values: what a model that learned nothing scores.
UNIFORM_BITS = 8.0
# Of every ten files (sorted by path), which go to validation and test.
_VAL, _TEST = 8, 9


def stdlib_root() -> pathlib.Path:
  """The folder of this Python's standard library sources."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def source_files(root: pathlib.Path) -> list[pathlib.Path]:
  """The ``.py`` files under ``root``, sorted by relative path, without site-packages.

  Raises:
    FileNotFoundError: when ``root`` holds no ``.py`` file (a Python installed
      without its sources).
  """
  files = sorted(
      (p for p in root.rglob("*.py")
       if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)),
      key=lambda p: p.relative_to(root).as_posix(),
  )
  if not files:
    raise FileNotFoundError(
        f"No .py sources under {root}: the lm task reads the standard library's source files. "
        "Install Python with its sources (e.g. the python3.X-dev or -full package), or pass "
        "corpus_dir=<a folder of .py files>."
    )
  return files


def read_corpus(root: pathlib.Path, max_bytes: int) -> dict[str, np.ndarray]:
  """Train, validation and test bytes (``uint8``), split by file, each at most ``max_bytes``.

  Files are joined in order, each ended by a newline; a split stops taking files
  once it holds ``max_bytes``.

  Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(10):
    ...   _ = (folder / f"m{i}.py").write_text(f"x = {i}")
    >>> corpus = read_corpus(folder, max_bytes=100)
    >>> print(bytes(corpus["val"]), bytes(corpus["test"]), len(corpus["train"]))
    b'x = 8\\n' b'x = 9\\n' 48
  """
  parts = {"train": [], "val": [], "test": []}
  sizes = dict.fromkeys(parts, 0)
  for i, path in enumerate(source_files(root)):
    split = {_VAL: "val", _TEST: "test"}.get(i % 10, "train")
    if sizes[split] >= max_bytes:
      continue
    data = path.read_bytes() + b"\n"
    parts[split].append(data)
    sizes[split] += len(data)
  return {k: np.frombuffer(b"".join(v)[:max_bytes], np.uint8) for k, v in parts.items()}


def windows(data: np.ndarray, count: int, length: int) -> np.ndarray:
  """``count`` windows of ``length`` bytes at evenly spaced offsets: a fixed eval set."""
  if len(data) < length:
    raise ValueError(f"A split of {len(data)} bytes cannot fill a window of {length}.")
  starts = np.linspace(0, len(data) - length, count).astype(np.int64)
  return np.stack([data[s:s + length] for s in starts])


def bits_per_byte(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy of the next byte, in bits."""
  nats = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  return nats / math.log(2)


def z_loss_term(logits: jax.Array) -> jax.Array:
  """``mean(log(Z)^2)``, ``Z`` the softmax's normaliser at each position (PaLM's z-loss).

  Example:
    >>> import jax.numpy as jnp
    >>> print(z_loss_term(jnp.zeros((1, 2, 4))))  # log(Z) = log 4 at both positions.
    1.921...
  """
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def lm(
    context: int = 64,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    batch_size: int = 16,
    max_bytes: int = 4_000_000,
    eval_windows: int = 64,
    warmup_fraction: float = 0.1,
    corpus_dir: str | None = None,
    *,
    init: str = "lecun",
    bias: bool = True,
    qk_layernorm: bool = False,
    z_loss: float = 0.0,
    adam_b2: float = 0.999,
) -> Task:
  """Next-byte prediction on the standard library's sources.

  Args:
    context: Bytes a sequence holds (the model sees ``context`` and predicts
      the next byte at each position).
    width: Model width.
    depth: Transformer blocks.
    heads: Attention heads.
    batch_size: Sequences per step.
    max_bytes: Bytes kept per split at most.
    eval_windows: Sequences in each of the fixed validation and test sets.
    warmup_fraction: Fraction of the steps of linear warm-up of the rate
      before its cosine decay to zero.
    corpus_dir: A folder of ``.py`` files to read instead of the standard
      library (for tests).
    init: ``"lecun"`` (Flax's default Dense init) or ``"gpt"`` (GPT-2's: every
      kernel N(0, 0.02), the attention and MLP output projections N(0, 0.02 /
      sqrt(2 * depth))). The embeddings are N(0, 0.02) and biases zero either way.
    bias: Whether the Dense layers and LayerNorms have biases.
    qk_layernorm: LayerNorm on the queries and keys of each head.
    z_loss: Coefficient of the auxiliary loss ``z_loss * mean(log(Z)^2)`` on
      the output logits (e.g. 1e-4; 0 turns it off). Only the training loss
      has it: the metric stays the cross-entropy in bits per byte.
    adam_b2: The second-moment decay of every Adam-like optimizer.

  Raises:
    ValueError: when ``init`` is neither ``"lecun"`` nor ``"gpt"`` or ``z_loss``
      is negative.

  Example:
    >>> import jax
    >>> task = lm(context=8, width=8, depth=1, heads=2, batch_size=2, max_bytes=20_000,
    ...           eval_windows=4)
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> print(task.loss(params, task.sample(task.data, jax.random.PRNGKey(1))).shape)
    ()
  """
  if init not in INITS:
    raise ValueError(f"`init` must be one of {INITS}, got {init!r}: e.g. lm(init='gpt').")
  if z_loss < 0:
    raise ValueError(f"`z_loss` must be >= 0, got {z_loss}: e.g. lm(z_loss=1e-4), or 0 for none.")
  root = pathlib.Path(corpus_dir) if corpus_dir else stdlib_root()
  corpus = read_corpus(root, max_bytes)
  model = CausalTransformer(vocab=256, outputs=256, max_length=context, width=width,
                            depth=depth, heads=heads, weight_init=init, bias=bias,
                            qk_layernorm=qk_layernorm)
  data = {"train": jnp.asarray(corpus["train"])}
  for split in ("val", "test"):
    data[split] = jnp.asarray(windows(corpus[split], eval_windows, context + 1))
  train_size = len(corpus["train"])

  def sample(data, key):
    starts = jax.random.randint(key, (batch_size,), 0, train_size - context - 1)
    index = starts[:, None] + jnp.arange(context + 1)
    return data["train"][index].astype(jnp.int32)

  def bits(params, sequences):
    sequences = sequences.astype(jnp.int32)
    return bits_per_byte(model.apply(params, sequences[:, :-1]), sequences[:, 1:])

  def loss(params, batch):
    if not z_loss:
      return bits(params, batch) * math.log(2)  # nats, as trained
    batch = batch.astype(jnp.int32)
    logits = model.apply(params, batch[:, :-1])
    nats = bits_per_byte(logits, batch[:, 1:]) * math.log(2)
    return nats + z_loss * z_loss_term(logits)

  def evaluate(params, data):
    return bits(params, data["val"]), bits(params, data["test"])

  def schedule(steps: int) -> optax.Schedule:
    warmup = max(1, int(round(warmup_fraction * steps)))
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(steps, warmup + 1))

  return Task(
      name="lm",
      data=data,
      init=lambda key: model.init(key, jnp.zeros((1, context), jnp.int32)),
      sample=sample,
      loss=loss,
      evaluate=evaluate,
      metric="bits/byte",
      higher_is_better=False,
      divergence_bound=UNIFORM_BITS * math.log(2),
      rates=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
      adaptive_rates=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
      steps=600,
      eval_every=50,
      adam_b2=adam_b2,
      schedule=schedule,
      settings={"context": context, "width": width, "depth": depth, "heads": heads,
                "batch_size": batch_size, "train/val/test bytes":
                f"{train_size}/{len(corpus['val'])}/{len(corpus['test'])}",
                "eval windows": eval_windows, "warm-up": f"{warmup_fraction:.0%}, cosine",
                "init": init, "bias": bias, "qk_layernorm": qk_layernorm, "z_loss": z_loss,
                "adam_b2": adam_b2},
  )


def lm_gpt(*, init: str = "gpt", bias: bool = False, adam_b2: float = 0.95, **options) -> Task:
  """The practitioners' setting of :func:`lm`: GPT-2's init, no biases, Adam's b2 0.95.

  GPT-2's init (Radford et al. 2019, as nanoGPT and Wortsman et al. 2023 use
  it): every kernel and embedding N(0, 0.02), the residual output projections
  N(0, 0.02 / sqrt(2 * depth)); no biases in the Dense layers and LayerNorms
  (nanoGPT's ``bias=False``); Adam's second-moment decay 0.95 (nanoGPT's
  ``beta2``). Everything else, and any option given, as :func:`lm`.

  Example:
    >>> task = lm_gpt(context=8, width=8, depth=1, heads=2, batch_size=2, max_bytes=20_000,
    ...               eval_windows=4)
    >>> print(task.name, task.adam_b2, task.settings["init"])
    lm_gpt 0.95 gpt
  """
  task = lm(init=init, bias=bias, adam_b2=adam_b2, **options)
  return dataclasses.replace(task, name="lm_gpt")
