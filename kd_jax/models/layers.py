"""Shared layers of the model zoo: PyTorch-faithful conv/BN/dense and the classifier heads.

Every conv uses explicit symmetric padding (never 'SAME': for stride 2 it shifts the
sampling grid against PyTorch), BatchNorm uses PyTorch's eps=1e-5 and momentum 0.1
(Flax momentum 0.9). Submodules are named after the PyTorch attribute path with '.'
replaced by '_' so that the importer maps keys by name.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / (kh*kw*out)).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch default Conv/Linear weight init: U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

AUX_HEADS = (None, "linear", "nonlinear")


def conv(features: int, kernel_size: int, *, strides: int = 1, padding: Optional[int] = None,
         groups: int = 1, use_bias: bool = False, name: str, dtype: Dtype = jnp.float32,
         kernel_init=kaiming_fan_out) -> nn.Conv:
  """A Conv with PyTorch padding semantics (default padding = kernel_size // 2 on both sides)."""
  pad = kernel_size // 2 if padding is None else padding
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                 use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, name=name)


def batch_norm(train: bool, *, name: str, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
  """BatchNorm with PyTorch conventions (eps 1e-5, momentum 0.1 == Flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, *, name: str, dtype: Dtype = jnp.float32,
          kernel_init=torch_default_kernel, bias_init=None) -> nn.Dense:
  """A Linear layer; default init is PyTorch's U(+-1/sqrt(fan_in)) for weight and bias."""
  if bias_init is None:
    bias_init = _torch_default_bias
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init, bias_init=bias_init, name=name)


def _torch_default_bias(key, shape, dtype=jnp.float32):
  # The fan_in is not known from the bias shape alone; nn.Dense only passes (features,).
  # Use the PyTorch-like small uniform range with an unknown fan-in of `features`.
  bound = 1.0 / jnp.sqrt(jnp.asarray(max(shape[0], 1), jnp.float32))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def check_aux_head(aux_head: Optional[str]) -> None:
  if aux_head not in AUX_HEADS:
    raise ValueError(f"aux_head={aux_head!r} is not supported; accepted: {AUX_HEADS}")


def classifier_heads(h: jax.Array, num_classes: int, aux_head: Optional[str], train: bool,
                     dtype: Dtype = jnp.float32, kernel_init=torch_default_kernel,
                     bias_init=None):
  """Main head `head` and, for DHKD, a sibling `aux_head` on the same pooled feature h.

  Must be called inside a parent's `nn.compact` method: the heads become its children,
  so params hold `params['head']` and `params['aux_head']` side by side.
  Returns logits [B, C], or (logits, aux_logits) when aux_head is set. Logits are float32.
  """
  check_aux_head(aux_head)
  logits = dense(num_classes, name="head", dtype=dtype, kernel_init=kernel_init,
                 bias_init=bias_init)(h).astype(jnp.float32)
  if aux_head is None:
    return logits
  if aux_head == "linear":
    aux = dense(num_classes, name="aux_head", dtype=dtype)(h)
  else:
    aux = AuxNonlinearHead(num_classes, dtype=dtype, name="aux_head")(h, train)
  return logits, aux.astype(jnp.float32)


class AuxNonlinearHead(nn.Module):
  """DHKD's nonlinear auxiliary head: Linear(d,200) -> Dropout(0.1) -> BN1d -> ReLU -> Linear(200,C).

  Submodule names follow the PyTorch `net.{0,2,4}` indices. Dropout needs the 'dropout' rng
  when train=True.
  """
  num_classes: int
  hidden: int = 200
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, train: bool = False):
    x = dense(self.hidden, name="net_0", dtype=self.dtype)(h)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    x = batch_norm(train, name="net_2", dtype=self.dtype)(x)
    x = nn.relu(x)
    return dense(self.num_classes, name="net_4", dtype=self.dtype)(x)
