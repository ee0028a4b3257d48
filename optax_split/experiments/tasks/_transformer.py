"""A small pre-LN causal transformer, shared by the ``lm`` and ``grokking`` tasks.

Learned token and position embeddings, pre-LayerNorm blocks (causal
self-attention, then a GELU MLP), a final LayerNorm and an untied read-out.
By default there is no qk-LayerNorm and no z-loss: at high learning rates the
attention logits and the output logits can grow without bound, the
instabilities that Wortsman et al. (2023) reproduce at small scale.
``qk_layernorm=True`` adds their model-side fix for the attention logits.

Two initialisations: ``"lecun"`` keeps Flax's defaults (LeCun-normal kernels)
and ``"gpt"`` is GPT-2's (Radford et al. 2019; nanoGPT; Wortsman et al. 2023):
every kernel and embedding N(0, 0.02), the residual output projections
(attention output and MLP output) N(0, 0.02 / sqrt(2 * depth)), biases zero.
Flax's LeCun init gives kernels of width ``d`` units of norm about 1, ~6x the
GPT init's at ``d = 64``, which matters to any rule relative to the weights.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

INITS = ("lecun", "gpt")
# GPT-2's standard deviation of every kernel and embedding.
GPT_STD = 0.02


def _check_init(weight_init: str) -> None:
  if weight_init not in INITS:
    raise ValueError(f"`weight_init` must be one of {INITS}, got {weight_init!r}: pass "
                     "weight_init='gpt' for GPT-2's N(0, 0.02) or 'lecun' for Flax's default.")


class Block(nn.Module):
  """``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

  Attributes:
    heads: Attention heads.
    mlp_ratio: Hidden units of the MLP per unit of width.
    weight_init: ``"lecun"`` (Flax's defaults) or ``"gpt"``.
    depth: Blocks in the model: the GPT init scales the residual output
      projections by ``1 / sqrt(2 * depth)``.
    bias: Whether the Dense layers and LayerNorms have biases.
    qk_layernorm: LayerNorm on the queries and keys of each head.
  """

  heads: int
  mlp_ratio: int = 4
  weight_init: str = "lecun"
  depth: int = 1
  bias: bool = True
  qk_layernorm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    # Flax's defaults stay implicit, so the LeCun variant is exactly the earlier model.
    no_bias = {} if self.bias else {"use_bias": False}
    kernel, output = {}, {}
    if self.weight_init == "gpt":
      kernel = {"kernel_init": nn.initializers.normal(GPT_STD)}
      output = {"kernel_init": nn.initializers.normal(GPT_STD / math.sqrt(2 * self.depth))}
    attention = dict(no_bias, **kernel)
    if output:
      attention["out_kernel_init"] = output["kernel_init"]
    if self.qk_layernorm:
      attention["normalize_qk"] = True
    causal = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    h = nn.LayerNorm(**no_bias)(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, **attention)(h, h, mask=causal)
    h = nn.LayerNorm(**no_bias)(x)
    h = nn.Dense(self.mlp_ratio * width, **no_bias, **kernel)(h)
    return x + nn.Dense(width, **no_bias, **output)(nn.gelu(h))


class CausalTransformer(nn.Module):
  """Token ids ``(batch, length)`` to logits ``(batch, length, outputs)``.

  Attributes:
    vocab: Number of input tokens.
    outputs: Number of output classes (the vocabulary for a language model).
    max_length: Longest sequence (the learned positions).
    width: Model width ``d``.
    depth: Number of blocks.
    heads: Attention heads per block.
    embed_std: Standard deviation of the token and position embeddings'
      normal init.
    weight_init: ``"lecun"`` (Flax's default Dense init) or ``"gpt"`` (every kernel
      N(0, 0.02), the residual output projections N(0, 0.02 / sqrt(2 *
      depth))); the embeddings follow ``embed_std`` either way.
    bias: Whether the Dense layers and LayerNorms have biases (``False`` as
      nanoGPT's ``bias=False``).
    qk_layernorm: LayerNorm on the queries and keys of each head (Flax's
      ``normalize_qk``; Dehghani et al. 2023, Wortsman et al. 2023).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = CausalTransformer(vocab=5, outputs=5, max_length=4, width=8, depth=1,
    ...                           heads=2, weight_init="gpt", bias=False)
    >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    >>> print(model.apply(params, jnp.zeros((3, 4), jnp.int32)).shape)
    (3, 4, 5)
  """

  vocab: int
  outputs: int
  max_length: int
  width: int
  depth: int
  heads: int
  embed_std: float = 0.02
  weight_init: str = "lecun"
  bias: bool = True
  qk_layernorm: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    _check_init(self.weight_init)
    init = nn.initializers.normal(self.embed_std)
    x = nn.Embed(self.vocab, self.width, embedding_init=init)(tokens)
    positions = self.param("positions", init, (self.max_length, self.width))
    x = x + positions[: tokens.shape[-1]]
    for _ in range(self.depth):
      x = Block(heads=self.heads, weight_init=self.weight_init, depth=self.depth, bias=self.bias,
                qk_layernorm=self.qk_layernorm)(x)
    no_bias = {} if self.bias else {"use_bias": False}
    readout = dict(no_bias)
    if self.weight_init == "gpt":
      readout["kernel_init"] = nn.initializers.normal(GPT_STD)
    return nn.Dense(self.outputs, **readout)(nn.LayerNorm(**no_bias)(x))
