"""A small pre-LN causal transformer, shared by the ``lm`` and ``grokking`` tasks.

Learned token and position embeddings, pre-LayerNorm blocks (causal
self-attention, then a GELU MLP), a final LayerNorm and an untied read-out.
There is no qk-LayerNorm and no z-loss: at high learning rates the attention
logits and the output logits can grow without bound, the instabilities that
Wortsman et al. (2023) reproduce at small scale.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  """``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    causal = nn.make_causal_mask(jnp.ones(x.shape[:-1], jnp.int32))
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h, mask=causal)
    h = nn.LayerNorm()(x)
    h = nn.Dense(self.mlp_ratio * x.shape[-1])(h)
    return x + nn.Dense(x.shape[-1])(nn.gelu(h))


class CausalTransformer(nn.Module):
  """Token ids ``(batch, length)`` to logits ``(batch, length, outputs)``.

  Attributes:
    vocab: Number of input tokens.
    outputs: Number of output classes (the vocabulary for a language model).
    max_length: Longest sequence (the learned positions).
    width: Model width ``d``.
    depth: Number of blocks.
    heads: Attention heads per block.
    embed_std: Standard deviation of the token embeddings' normal init.
  """

  vocab: int
  outputs: int
  max_length: int
  width: int
  depth: int
  heads: int
  embed_std: float = 0.02

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    init = nn.initializers.normal(self.embed_std)
    x = nn.Embed(self.vocab, self.width, embedding_init=init)(tokens)
    positions = self.param("positions", init, (self.max_length, self.width))
    x = x + positions[: tokens.shape[-1]]
    for _ in range(self.depth):
      x = Block(heads=self.heads)(x)
    return nn.Dense(self.outputs)(nn.LayerNorm()(x))
