"""Shared layers of the model zoo: PyTorch-faithful conv/BN/dense, pooling and classifier heads.

Explicit symmetric padding, BN eps 1e-5/momentum 0.1, PyTorch inits; names follow torch paths."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / (kh*kw*out)).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch default Conv/Linear weight init: U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

AUX_HEADS = ("linear", "nonlinear")   # the DHKD auxiliary heads; None = no auxiliary head


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


def torch_default_bias(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default Conv/Linear bias init, U(+-1/sqrt(fan_in)), for a known fan_in."""
  bound = 1.0 / math.sqrt(max(int(fan_in), 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Linear(nn.Module):
  """A Dense layer (params `kernel` [in, out], `bias` [out]) with PyTorch's default init.

  `bias_init=None` means U(+-1/sqrt(fan_in)) with the real fan_in (the input width), which
  flax's nn.Dense cannot express because its bias initializer only sees (features,).
  Params are float32; the matmul runs in `dtype`.
  """
  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., jax.Array] = torch_default_kernel
  bias_init: Optional[Callable[..., jax.Array]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), jnp.float32)
    bias_init = self.bias_init if self.bias_init is not None else torch_default_bias(fan_in)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias


def dense(features: int, *, name: str, dtype: Dtype = jnp.float32,
          kernel_init=torch_default_kernel, bias_init=None) -> Linear:
  """A Linear layer; default init is PyTorch's U(+-1/sqrt(fan_in)) for weight and bias."""
  return Linear(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init, name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H, W of an NHWC map (== the references' fixed pools on their native size).

  The reduction runs in float32 and the result is cast back to the input dtype.
  """
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def check_aux_head(aux_head: Optional[str]) -> None:
  """Raises ValueError unless aux_head is None or one of AUX_HEADS."""
  if aux_head is not None and aux_head not in AUX_HEADS:
    raise ValueError(f"aux_head={aux_head!r} is not supported; accepted: None, "
                     f"{', '.join(repr(h) for h in AUX_HEADS)}")


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
