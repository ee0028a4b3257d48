"""The lm task's options: GPT-2's init, biases, qk-LayerNorm, z-loss, Adam's b2."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_split.experiments import tasks
from optax_split.experiments.tasks import lm
from optax_split.experiments.tasks._transformer import CausalTransformer

TINY = {"context": 8, "width": 8, "depth": 1, "heads": 2, "batch_size": 2, "eval_windows": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("lib")
  for i in range(30):
    (folder / f"m{i:02d}.py").write_text(f"# module {i}\nx = {i} * {i + 1}\n" * 20)
  return str(folder)


def _leaves(params):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _batch(task):
  return task.sample(task.data, jax.random.PRNGKey(1))


def _init(task, seed=0):
  return task.init(jax.random.PRNGKey(seed))


def _loss(task, params, batch):
  return float(task.loss(params, batch))


class _BlockBefore(nn.Module):
  """The block as it was before the options: Flax's defaults throughout."""

  heads: int

  @nn.compact
  def __call__(self, x):
    causal = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h, mask=causal)
    h = nn.LayerNorm()(x)
    h = nn.Dense(4 * x.shape[-1])(h)
    return x + nn.Dense(x.shape[-1])(nn.gelu(h))


class _TransformerBefore(nn.Module):
  """The model as it was before the options (its module and parameter names)."""

  width: int
  depth: int
  heads: int
  max_length: int

  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(0.02)
    x = nn.Embed(256, self.width, embedding_init=init, name="Embed_0")(tokens)
    x = x + self.param("positions", init, (self.max_length, self.width))[: tokens.shape[-1]]
    for i in range(self.depth):
      x = _BlockBefore(heads=self.heads, name=f"Block_{i}")(x)
    return nn.Dense(256, name="Dense_0")(nn.LayerNorm(name="LayerNorm_0")(x))


def test_lm_defaults_build_the_earlier_model_bit_for_bit(corpus):
  task = tasks.make("lm", corpus_dir=corpus, context=8, width=16, depth=2, heads=2,
                    batch_size=2, eval_windows=4)
  before = _TransformerBefore(width=16, depth=2, heads=2, max_length=8)
  params = _init(task, seed=3)
  expected = before.init(jax.random.PRNGKey(3), jnp.zeros((1, 8), jnp.int32))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for (name, leaf), want in zip(_leaves(params).items(), _leaves(expected).values(),
                                strict=True):
    np.testing.assert_array_equal(leaf, want, err_msg=name)
  batch = _batch(task).astype(jnp.int32)
  logits = before.apply(expected, batch[:, :-1])
  nats = lm.bits_per_byte(logits, batch[:, 1:]) * math.log(2)
  assert _loss(task, params, batch) == float(nats)
  assert task.name == "lm" and task.adam_b2 == 0.999
  assert any(name.endswith("['bias']") for name in _leaves(params))


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_init_draws_every_kernel_from_gpt2s_normals(corpus, bias):
  depth = 2
  task = tasks.make("lm_gpt", corpus_dir=corpus, context=16, width=64, depth=depth, heads=4,
                    batch_size=2, eval_windows=4, bias=bias)
  leaves = _leaves(_init(task))
  residual_std = 0.02 / math.sqrt(2 * depth)
  checked = {"kernel": 0, "residual": 0, "bias": 0}
  for name, leaf in leaves.items():
    if name.endswith("['bias']"):
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
      checked["bias"] += 1
    elif name.endswith(("['kernel']", "['embedding']", "['positions']")):
      residual = "['out']" in name or ("Block" in name and "['Dense_1']" in name)
      std = residual_std if residual else 0.02
      # A normal's sample std has relative error ~1/sqrt(2n): n >= 1024 here.
      np.testing.assert_allclose(leaf.std(), std, rtol=0.1, err_msg=name)
      assert abs(leaf.mean()) < 4 * std / math.sqrt(leaf.size), name
      checked["residual" if residual else "kernel"] += 1
    else:  # LayerNorm scales.
      assert name.endswith("['scale']"), name
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)
  # Per block: query, key, value and the MLP's input; then the embeddings and the read-out.
  assert checked["kernel"] == 4 * depth + 3 and checked["residual"] == 2 * depth
  assert (checked["bias"] > 0) == bias


def test_gpt_init_is_far_smaller_than_flaxs_default(corpus):
  sizes = dict(TINY, corpus_dir=corpus, width=64, heads=4)
  lecun = _leaves(_init(tasks.make("lm", **sizes)))
  gpt = _leaves(_init(tasks.make("lm", init="gpt", **sizes)))
  name = "['params']['Block_0']['Dense_0']['kernel']"
  # LeCun normal: std 1 / sqrt(fan_in) = 1 / 8, ~6x GPT-2's 0.02.
  np.testing.assert_allclose(lecun[name].std(), 1 / 8, rtol=0.1)
  np.testing.assert_allclose(gpt[name].std(), 0.02, rtol=0.1)
  assert gpt.keys() == lecun.keys()  # Only the values differ.


def test_unknown_init_says_what_to_pass(corpus):
  with pytest.raises(ValueError, match="`init`.*'lecun'.*init='gpt'"):
    tasks.make("lm", corpus_dir=corpus, init="xavier", **TINY)
  with pytest.raises(ValueError, match="`z_loss`.*z_loss=1e-4"):
    tasks.make("lm", corpus_dir=corpus, z_loss=-1.0, **TINY)


def test_qk_layernorm_adds_a_scale_per_query_and_key_and_changes_the_output(corpus):
  plain = tasks.make("lm", corpus_dir=corpus, **TINY)
  normed = tasks.make("lm", corpus_dir=corpus, qk_layernorm=True, **TINY)
  p, q = _leaves(_init(plain)), _leaves(_init(normed))
  added = sorted(set(q) - set(p))
  attention = "['params']['Block_0']['MultiHeadDotProductAttention_0']"
  assert added == [f"{attention}['key_ln']['scale']", f"{attention}['query_ln']['scale']"]
  chex.assert_shape([q[n] for n in added], (TINY["width"] // TINY["heads"],))  # Per head.
  assert set(p) <= set(q) and all(np.array_equal(p[n], q[n]) for n in p)
  batch = _batch(plain)
  loss_plain = _loss(plain, _init(plain), batch)
  loss_normed = _loss(normed, _init(normed), batch)
  assert np.isfinite(loss_normed) and loss_normed != loss_plain


def test_z_loss_is_in_the_training_loss_only(corpus):
  z = 1e-2
  plain = tasks.make("lm", corpus_dir=corpus, **TINY)
  with_z = tasks.make("lm", corpus_dir=corpus, z_loss=z, **TINY)
  params = _init(plain)
  # Larger logits than at init, so the term is far from negligible.
  params = jax.tree.map(lambda x: 5 * x, params)
  batch = _batch(plain)
  model = CausalTransformer(vocab=256, outputs=256, max_length=TINY["context"],
                            width=TINY["width"], depth=TINY["depth"], heads=TINY["heads"])
  logits = np.asarray(model.apply(params, batch[:, :-1].astype(jnp.int32)), np.float64)
  top = logits.max(axis=-1, keepdims=True)
  log_z = (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]
  extra = _loss(with_z, params, batch) - _loss(plain, params, batch)
  np.testing.assert_allclose(extra, z * np.mean(log_z**2), rtol=1e-4)
  assert z * np.mean(log_z**2) > 1e-2
  chex.assert_trees_all_equal(with_z.evaluate(params, with_z.data),
                              plain.evaluate(params, plain.data))


def test_lm_gpt_is_the_practitioners_setting(corpus):
  task = tasks.make("lm_gpt", corpus_dir=corpus, **TINY)
  assert "lm_gpt" in tasks.NAMES and task.name == "lm_gpt" and task.adam_b2 == 0.95
  assert task.settings["init"] == "gpt" and task.settings["bias"] is False
  assert not any(name.endswith("['bias']") for name in _leaves(_init(task)))
  assert tasks.make("lm", corpus_dir=corpus, adam_b2=0.98, **TINY).adam_b2 == 0.98
  # The options reach it too; an untrained model scores about 8 bits per byte.
  task = tasks.make("lm_gpt", corpus_dir=corpus, qk_layernorm=True, z_loss=1e-4, **TINY)
  params = _init(task)
  loss, grads = jax.value_and_grad(task.loss)(params, _batch(task))
  assert np.isfinite(float(loss)) and float(optax.tree.norm(grads)) > 0
  assert 7.0 < float(task.evaluate(params, task.data)[0]) < 9.0
