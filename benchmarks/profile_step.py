"""Where the online KD step's time goes, kd_jax and PyTorch eager side by side.

Each part of the step is timed as its own compiled function (kd_jax: jitted with the train
step's CPU compiler options) or eager call (PyTorch); the median of --repeats calls is
reported. Each side runs in its own process (XLA's and PyTorch's thread pools in one process
fight for the cores; each side's line is printed as it finishes), the two alternating over
--rounds, and each part's figure is the median over the rounds:

  teacher_forward     teacher in eval mode
  student_forward     student in train mode (batch statistics)
  student_fwd_bwd     student forward + KD loss + gradients w.r.t. the student's parameters
  loss_fwd_bwd        the KD loss and its gradient w.r.t. the student's logits only
  optimizer           SGD momentum + weight decay update of the student's parameters
  full_step           kd_jax: the real train step (train_step.py); PyTorch: torch_reference's

and, for the student's backward by layer type, every convolution of the student (shapes read
from its jaxpr) as forward, input gradient and weight gradient, summed over the layers;
`other_backward` is student_fwd_bwd - student_forward - the convolution gradients (BatchNorm,
ReLU, pooling, the classifier, the loss). PyTorch's torch.profiler table of the same full step
(self CPU time per aten op, per step) comes last. Prints one JSON line.

    python benchmarks/profile_step.py --teacher resnet32x4 --student resnet8x4 --batch-size 64
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

import torch_reference  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position
from kd_jax import models  # pylint: disable=wrong-import-position
from kd_jax.train import step as step_lib  # pylint: disable=wrong-import-position
from machine import cpu_model, kd_loss_jax  # pylint: disable=wrong-import-position


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1000.0 * statistics.median(times)


def conv_layers(student, variables, x) -> list[dict]:
  """The student's convolutions: lhs/rhs shapes, strides, padding, from its train-mode jaxpr."""
  def fwd(v, x):
    return student.apply(v, x, train=True, mutable=["batch_stats"])[0]
  jaxpr = jax.make_jaxpr(fwd)(variables, x)
  found = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        p = eqn.params
        found.append({"lhs": tuple(eqn.invars[0].aval.shape), "rhs": tuple(eqn.invars[1].aval.shape),
                      "strides": tuple(p["window_strides"]), "padding": tuple(p["padding"]),
                      "dn": p["dimension_numbers"]})
      for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
        walk(sub)
      for v in eqn.params.values():
        inner = getattr(v, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          walk(inner)
  walk(jaxpr.jaxpr)
  return found


def jax_conv_parts(layer: dict, options, repeats: int) -> dict[str, float]:
  """ms of one convolution's forward, input gradient and weight gradient (kd_jax, jitted)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(layer["lhs"]), jnp.float32)
  w = jnp.asarray(0.1 * rng.standard_normal(layer["rhs"]), jnp.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, layer["strides"], layer["padding"],
                                        dimension_numbers=layer["dn"])
  y = conv(x, w)
  g = jnp.ones_like(y)
  fwd = jax.jit(conv, compiler_options=options)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
               compiler_options=options)
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
               compiler_options=options)
  out = {"conv_forward": _median_ms(lambda: fwd(x, w).block_until_ready(), repeats),
         "conv_weight_grad": _median_ms(lambda: dw(x, w, g).block_until_ready(), repeats)}
  # The stem's input gradient is never computed (the images need none).
  out["conv_input_grad"] = (0.0 if layer["lhs"][-1] == 3 else
                            _median_ms(lambda: dx(x, w, g).block_until_ready(), repeats))
  return out


def torch_conv_parts(layer: dict, repeats: int) -> dict[str, float]:
  """The same convolution in PyTorch eager (NCHW, as torch_reference's models)."""
  n, h, w_, c = layer["lhs"]
  kh, kw, cin, cout = layer["rhs"]
  stride = layer["strides"][0]
  pad = layer["padding"][0][0]
  x = torch.randn(n, c, h, w_)
  wt = (0.1 * torch.randn(cout, cin, kh, kw))
  y = F.conv2d(x, wt, stride=stride, padding=pad)
  g = torch.ones_like(y)
  out = {"conv_forward": _median_ms(lambda: F.conv2d(x, wt, stride=stride, padding=pad), repeats),
         "conv_weight_grad": _median_ms(lambda: torch.nn.grad.conv2d_weight(
             x, wt.shape, g, stride=stride, padding=pad), repeats)}
  out["conv_input_grad"] = (0.0 if c == 3 else _median_ms(lambda: torch.nn.grad.conv2d_input(
      x.shape, wt, g, stride=stride, padding=pad), repeats))
  return out


def run_side(args: argparse.Namespace) -> dict:
  """One side's figures (args.side: jax or torch); each side runs in its own process."""
  ts_args = train_step.parse_args([
      "--teacher", args.teacher, "--student", args.student, "--method", "kd",
      "--batch-size", str(args.batch_size), "--num-examples", str(max(args.batch_size, 256)),
      "--num-devices", "1"])
  setup = train_step.build(ts_args)
  spec, mesh = setup.spec, setup.spec.mesh
  options = step_lib.compiler_options(mesh)
  b = args.batch_size
  rng = np.random.default_rng(0)
  x_np = rng.standard_normal((b, 32, 32, 3)).astype(np.float32)
  y_np = rng.integers(0, 100, (b,)).astype(np.int32)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  student, teacher = spec.student, spec.teacher
  svars = {"params": setup.state.params, "batch_stats": setup.state.batch_stats}
  tvars = setup.teacher_vars
  jit = lambda f: jax.jit(f, compiler_options=options)

  t_fwd = jit(lambda v, x: teacher.apply(v, x, train=False))
  s_fwd = jit(lambda v, x: student.apply(v, x, train=True, mutable=["batch_stats"]))
  t_logits = t_fwd(tvars, x)

  def s_loss(params, stats, x, tl, y):
    logits, _ = student.apply({"params": params, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"])
    return kd_loss_jax(logits, tl, y)
  s_fb = jit(jax.value_and_grad(s_loss))
  logits0 = s_fwd(svars, x)[0]
  loss_fb = jit(jax.value_and_grad(kd_loss_jax))
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  opt_state = tx.init(svars["params"])
  grads = s_fb(svars["params"], svars["batch_stats"], x, t_logits, y)[1]
  opt = jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
  train_fn = step_lib.make_train_fn(spec, 1)
  state_box = [setup.state]

  def jax_full():
    state_box[0] = train_fn(state_box[0], tvars, setup.data)
    jax.block_until_ready(state_box[0])

  # PyTorch eager, the same shapes (NCHW), torch_reference's models, loss and optimizer.
  torch.manual_seed(0)
  tt = torch_reference.MODELS[args.teacher](100).eval()
  for p in tt.parameters():
    p.requires_grad_(False)
  st = torch_reference.MODELS[args.student](100).train()
  topt = torch.optim.SGD(st.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
  xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(y_np.astype(np.int64))
  with torch.no_grad():
    tlt = tt(xt)
  step = torch_reference.make_step(tt, st, topt)

  def torch_s_fb():
    st.zero_grad(set_to_none=True)
    torch_reference.kd_loss(st(xt), tlt, yt).backward()

  torch_s_fb()
  lt = torch.randn(b, 100, requires_grad=True)

  def torch_loss_fb():
    lt.grad = None
    torch_reference.kd_loss(lt, tlt, yt).backward()

  parts = {
      "teacher_forward": (lambda: t_fwd(tvars, x).block_until_ready(),
                          lambda: torch.no_grad()(tt)(xt)),
      "student_forward": (lambda: jax.block_until_ready(s_fwd(svars, x)),
                          lambda: st(xt)),
      "student_fwd_bwd": (lambda: jax.block_until_ready(
          s_fb(svars["params"], svars["batch_stats"], x, t_logits, y)), torch_s_fb),
      "loss_fwd_bwd": (lambda: jax.block_until_ready(loss_fb(logits0, t_logits, y)),
                       torch_loss_fb),
      "optimizer": (lambda: jax.block_until_ready(opt(svars["params"], opt_state, grads)),
                    topt.step),
      "full_step": (jax_full, lambda: step([xt], yt)),
  }
  side = 0 if args.side == "jax" else 1
  key = f"{args.side}_ms"
  result: dict[str, Any] = {key: {}}
  for name, fns in parts.items():
    result[key][name] = _median_ms(fns[side], args.repeats)

  convs = conv_layers(student, svars, x)
  result["student_convolutions"] = len(convs)
  for k in ("conv_forward", "conv_input_grad", "conv_weight_grad"):
    result[key][k] = 0.0
  shapes = collections.Counter(json.dumps({k: v for k, v in c.items() if k != "dn"})
                               for c in convs)
  by_shape = []
  for shape_key, count in shapes.items():
    layer = next(c for c in convs
                 if json.dumps({k: v for k, v in c.items() if k != "dn"}) == shape_key)
    parts_ms = (jax_conv_parts(layer, options, args.repeats) if args.side == "jax"
                else torch_conv_parts(layer, args.repeats))
    for k in parts_ms:
      result[key][k] += count * parts_ms[k]
    by_shape.append({"lhs": layer["lhs"], "rhs": layer["rhs"], "strides": layer["strides"],
                     "count": count, key: parts_ms})
  result["conv_by_shape"] = by_shape
  r = result[key]
  r["other_backward"] = (r["student_fwd_bwd"] - r["student_forward"] - r["conv_input_grad"]
                         - r["conv_weight_grad"])
  if args.side == "torch":
    # torch.profiler over the same full step: self CPU ms per step, by aten op.
    steps = max(3, args.repeats // 2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
      for _ in range(steps):
        step([xt], yt)
    table = sorted(((e.key, e.self_cpu_time_total / 1000.0 / steps, e.count // steps)
                    for e in prof.key_averages()), key=lambda t: -t[1])
    result["torch_profiler_self_ms_per_step"] = [
        {"op": k, "ms": round(ms, 2), "calls": c} for k, ms, c in table[:15]]
    result["torch_threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
  else:
    result["jax"] = jax.__version__
    result["compiler_options"] = options
  return result


def run(args: argparse.Namespace) -> dict:
  """Both sides, each in its own process (two thread pools in one process fight for the
  cores), alternating over --rounds; per part, the median over the rounds."""
  import subprocess  # pylint: disable=import-outside-toplevel
  base = [sys.executable, os.path.abspath(__file__), "--teacher", args.teacher, "--student",
          args.student, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
  sides: dict[str, list[dict]] = {"jax": [], "torch": []}
  for r in range(args.rounds):
    for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
      proc = subprocess.run(base + ["--side", side], capture_output=True, text=True,
                            check=False, env=dict(os.environ, **json.loads(args.side_env)))
      if proc.returncode != 0:
        raise RuntimeError(f"--side {side} failed:\n{proc.stderr[-3000:]}")
      rec = json.loads(proc.stdout.strip().splitlines()[-1])
      sides[side].append(rec)
      # Each side's line as it comes, so an interrupted run keeps what it measured.
      print(json.dumps({"kind": "profile_side", "side": side, "round": r, **rec}), flush=True)
  result: dict[str, Any] = {"kind": "profile_step", "teacher": args.teacher,
                            "student": args.student, "batch_size": args.batch_size,
                            "repeats": args.repeats, "rounds": args.rounds}
  for side, recs in sides.items():
    key = f"{side}_ms"
    result[key] = {k: statistics.median(r[key][k] for r in recs) for k in recs[0][key]}
    for k, v in recs[-1].items():
      if k not in (key, "conv_by_shape"):
        result[k] = v
  result["conv_by_shape"] = [
      {**a, **{k: v for k, v in b.items() if k.endswith("_ms")}}
      for a, b in zip(sides["jax"][-1]["conv_by_shape"], sides["torch"][-1]["conv_by_shape"])]
  result["jax_over_torch_time"] = {k: result["jax_ms"][k] / result["torch_ms"][k]
                                   for k in result["jax_ms"] if result["torch_ms"].get(k)}
  result["device"] = f"cpu: {cpu_model()}"
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--teacher", default="resnet32x4", choices=sorted(torch_reference.MODELS))
  p.add_argument("--student", default="resnet8x4", choices=sorted(torch_reference.MODELS))
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2, help="alternating jax/torch processes")
  p.add_argument("--side-env", default="{}",
                 help="JSON dict of environment variables for both sides (e.g. XLA_FLAGS)")
  p.add_argument("--side", default="", choices=["", "jax", "torch"], help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.batch_size < 1 or args.repeats < 1:
    p.error("--batch-size and --repeats must be >= 1")
  if args.teacher not in models.names() or args.student not in models.names():
    p.error("--teacher/--student: a model both kd_jax and torch_reference define")
  print(json.dumps(run_side(args) if args.side else run(args)), flush=True)


if __name__ == "__main__":
  main()
