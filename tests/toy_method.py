r"""A toy method, written the way a new method is added: its loss function, its record and its
config file, nothing else (tests/test_methods.py registers it for the tests that use it).

toy = CE + w(e) * toy_weight * reduce_mode_i T_i'^2 KL(p_t^{T_i'} || p_s^{T_i'}) on the view
`strong`, T_i' = R(tau) * toy_temps[i], with tau a learnable loss parameter read through the
gradient-reversal layer R (so tau climbs the term while the student descends it), reduce_mode
the mean or the max over the temperatures.

  python launch.py --config=tests/toy_method.py --print_config
"""
import jax.numpy as jnp

from kd_jax import config as kdc
from kd_jax import losses
from kd_jax import methods

NAME = "toy"


# --- Its loss function ---------------------------------------------------------------------


def toy_loss(student_logits, teacher_logits, tau, *, temperatures, mode: str):
  """[B]: reduce_mode over i of T_i^2 KL(p_t^{T_i} || p_s^{T_i}), T_i = tau * temperatures[i]."""
  per_t = jnp.stack([losses.kd(student_logits, teacher_logits, temperature=tau * t)
                     for t in temperatures])
  return jnp.max(per_t, axis=0) if mode == "max" else jnp.mean(per_t, axis=0)


# --- Its record ----------------------------------------------------------------------------


def _terms(spec, x):
  strong = x.views["strong"]
  tau = losses.gradient_reversal(x.loss_params["tau"], 1.0)
  return {"toy": x.warmup * spec.toy_weight * jnp.mean(toy_loss(
      strong.student, strong.teacher, tau, temperatures=spec.toy_temps, mode=spec.toy_mode))}


RECORD = methods.Method(
    name=NAME, summary="CE + toy_weight * KD of the strong view at learned temperatures",
    terms=_terms, term_names=("toy",), needs_teacher=True,
    hypers=(
        methods.Hyper("toy_weight", 0.5, "toy: weight of its term", methods.Range(0.0),
                      sweepable=True),
        methods.Hyper("toy_temps", (1.0, 2.0), "toy: the temperatures T_i",
                      methods.Numbers(methods.Range(0.0, lo_open=True))),
        methods.Hyper("toy_mode", "mean", "toy: how the temperatures' terms combine",
                      methods.Choice(("mean", "max"))),
    ),
    views=(methods.View("default"), methods.View("strong", "random_resized_crop")),
    loss_params=lambda spec, init: {"tau": jnp.ones((), jnp.float32)},
    metric_names=("toy_tau",), metrics=lambda spec, x: {"toy_tau": x.loss_params["tau"]},
    cifar={"loss.ce_weight": 0.5, "loss.toy_weight": 0.25, "loss.temperature": 4.0},
    distill_weight="toy_weight")


def register() -> None:
  """Registers the record once (a config file may be loaded more than once)."""
  if NAME not in methods.names():
    methods.register(RECORD)


# --- Its config file -----------------------------------------------------------------------


def get_config(arg=None):
  register()
  config = kdc.method_defaults(kdc.base_config(), NAME)
  config.update(dict(dataset="synthetic", num_classes=100, train_examples=64, eval_examples=16,
                     student="resnet8", teacher="resnet8", teacher_checkpoint="random:0",
                     batch_size=16, eval_batch_size=16, num_train_steps=4, log_every_steps=2,
                     checkpoint_every_steps=2, num_devices=1, learning_rate=0.5))
  return kdc.from_arg(config, arg)

