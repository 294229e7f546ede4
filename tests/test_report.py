"""Tests of kd_jax.report (tables, plots, partial/resumed runs) and kd_jax.published.

Synthetic workdirs are written here; expected numbers are computed from them independently.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from kd_jax import published
from kd_jax import report

RESULTS_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                          "results.md")
STEPS_PER_EPOCH = 10


def _config(method="kd", teacher="resnet32x4", student="resnet8x4", dataset="cifar100",
            seed=0, num_epochs=5, base_method=None, **loss):
  base_loss = {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "standardize": False}
  base_loss.update(loss)
  return {"method": method, "base_method": base_method or method, "teacher": teacher,
          "student": student, "dataset": dataset, "seed": seed, "num_epochs": num_epochs,
          "num_train_steps": -1, "batch_size": 64, "loss": base_loss}


def _lines(top1s, seed=0, epochs=None, terms=("ce", "kd")):
  """Metric records: two train lines per epoch, then one eval line."""
  rng = np.random.default_rng(seed)
  out = []
  for i, top1 in enumerate(top1s):
    epoch = (epochs[i] if epochs else i + 1)
    for half in (STEPS_PER_EPOCH // 2, STEPS_PER_EPOCH):
      step = (epoch - 1) * STEPS_PER_EPOCH + half
      rec = {"step": step, "epoch": step / STEPS_PER_EPOCH,
             "train/loss": float(rng.uniform(1, 3)), "train/top1": float(rng.uniform()),
             "lr": 0.05, "images_per_sec": float(rng.uniform(900, 1100)),
             "elapsed_s": 60.0 * step / STEPS_PER_EPOCH, "skipped_steps": 0}
      rec.update({f"train/{t}": float(rng.uniform()) for t in terms})
      out.append(rec)
    step = epoch * STEPS_PER_EPOCH
    out.append({"step": step, "epoch": float(epoch), "eval/top1": top1,
                "eval/top5": min(1.0, top1 + 0.2), "eval/loss": 1.0,
                "elapsed_s": 60.0 * epoch + 5})
  return out


def _write(root, name, config, records, tail=""):
  d = os.path.join(str(root), name)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records) + tail)
  return d


def _top1s(seed, n=5):
  """Distinct accuracies (no ties), different per seed."""
  rng = np.random.default_rng(100 + seed)
  return [round(float(x), 4) for x in 0.5 + 0.3 * rng.permutation(n) / n
          + rng.uniform(0, 0.01, n)]


def _setting_row(summary, method, student="resnet8x4"):
  rows = [r for r in summary["settings"] if r["method"] == method and r["student"] == student]
  assert len(rows) == 1, [r["method"] for r in summary["settings"]]
  return rows[0]


def _md_row(md, *cells):
  """The Markdown table line containing all `cells` as whole cells."""
  found = [l for l in md.splitlines()
           if l.startswith("|") and all(f"| {c} |" in l for c in cells)]
  assert len(found) == 1, (cells, found)
  return found[0]


@pytest.fixture(name="three_seeds")
def fixture_three_seeds(tmp_path):
  dirs, top1s = [], {}
  for seed in range(3):
    top1s[seed] = _top1s(seed)
    dirs.append(_write(tmp_path, f"kd_s{seed}", _config(seed=seed), _lines(top1s[seed], seed)))
  return dirs, top1s


def test_table_numbers_equal_metrics(tmp_path, three_seeds):
  dirs, top1s = three_seeds
  out = tmp_path / "out"
  assert report.main(dirs + ["--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  row = _setting_row(summary, "kd")
  best = np.array([100 * max(t) for t in top1s.values()])
  final = np.array([100 * t[-1] for t in top1s.values()])
  best_epochs = [int(np.argmax(t)) + 1 for t in top1s.values()]
  assert row["n"] == 3 and sorted(row["seeds"]) == [0, 1, 2]
  assert row["best_top1"]["mean"] == pytest.approx(best.mean())
  assert row["best_top1"]["std"] == pytest.approx(best.std(ddof=1))
  assert row["final_top1"]["mean"] == pytest.approx(final.mean())
  assert row["final_top1"]["std"] == pytest.approx(final.std(ddof=1))
  assert row["best_epochs"] == pytest.approx(best_epochs)
  best_top5 = [100 * min(1.0, max(t) + 0.2) for t in top1s.values()]
  assert row["best_top5"]["mean"] == pytest.approx(np.mean(best_top5))
  assert row["status"] == "complete"
  assert row["wall_s"] == pytest.approx(60.0 * 5 + 5)
  per_run = {r["seed"]: r for r in summary["runs"]}
  for seed, t in top1s.items():
    assert per_run[seed]["best_top1"] == pytest.approx(100 * max(t))
    assert per_run[seed]["final_top1"] == pytest.approx(100 * t[-1])
    assert per_run[seed]["best_epoch"] == np.argmax(t) + 1
    ips = [r["images_per_sec"] for r in _lines(t, seed)
           if "images_per_sec" in r]
    assert per_run[seed]["images_per_sec"] == pytest.approx(np.median(ips))
  md = (out / "report.md").read_text()
  line = _md_row(md, "kd", "resnet32x4", "resnet8x4")
  assert f"{final.mean():.2f} ± {final.std(ddof=1):.2f}" in line
  assert f"{best.mean():.2f} ± {best.std(ddof=1):.2f}" in line
  assert "0, 1, 2 (3)" in line
  assert "best-epoch" in md and "last-epoch" in md  # conventions stated in the header


def test_plots_are_valid_pngs(tmp_path, three_seeds):
  dirs, _ = three_seeds
  summary = report.write_report(dirs, str(tmp_path / "out"))
  assert summary["plots"] == list(report.PLOTS)
  for name in report.PLOTS:
    path = tmp_path / "out" / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
      im.verify()
    with Image.open(path) as im:
      assert im.size[0] > 200 and im.size[1] > 200
  runs = [report.load_run(d) for d in dirs]
  assert report.loss_terms(runs) == ["train/ce", "train/kd"]
  md = (tmp_path / "out" / "report.md").read_text()
  assert all(f"]({name})" in md for name in report.PLOTS)


def test_partial_run_with_truncated_last_line(tmp_path):
  top1s = [0.40, 0.55, 0.52]
  cut = json.dumps({"step": 40, "epoch": 4.0, "eval/top1": 0.99, "eval/top5": 1.0})[:25]
  d = _write(tmp_path, "partial", _config(num_epochs=5), _lines(top1s), tail=cut)
  run = report.load_run(d)
  assert len(run.warnings) == 1 and "truncated last line" in run.warnings[0]
  assert [e["epoch"] for e in run.evals] == [1.0, 2.0, 3.0]
  s = report.run_summary(run)
  assert s["status"] == "partial"
  assert s["best_top1"] == pytest.approx(55.0) and s["best_epoch"] == 2
  assert s["final_top1"] == pytest.approx(52.0) and s["epochs_done"] == 3
  # In a setting with a complete seed, the partial run is listed but not averaged.
  full = _write(tmp_path, "complete", _config(num_epochs=5, seed=1), _lines(_top1s(1), 1))
  rows = report.summarize([run, report.load_run(full)])
  assert len(rows) == 1
  assert rows[0]["n"] == 1 and rows[0]["n_runs"] == 2 and rows[0]["seeds"] == [1]
  assert rows[0]["best_top1"]["mean"] == pytest.approx(100 * max(_top1s(1)))
  assert "1/2 complete" in rows[0]["status"]
  # Alone, a partial run is reported as such.
  assert report.summarize([run])[0]["status"] == "partial"


def test_run_without_eval_lines(tmp_path):
  records = [r for r in _lines([0.5, 0.6]) if "eval/top1" not in r]
  d = _write(tmp_path, "no_eval", _config(), records)
  out = tmp_path / "out"
  assert report.main([d, "--out", str(out)]) == 0
  s = json.loads((out / "summary.json").read_text())["runs"][0]
  assert s["best_top1"] is None and s["status"] == "partial"
  assert s["images_per_sec"] == pytest.approx(np.median([r["images_per_sec"] for r in records]))


def test_resumed_run_later_line_wins(tmp_path):
  first = _lines([0.30, 0.40, 0.45, 0.47], seed=1)
  second = _lines([0.31, 0.41, 0.46, 0.50, 0.52, 0.56], seed=2)
  # The first attempt died after epoch 4; the resumed one restarted at the end of epoch 2.
  resumed = [r for r in second if r["step"] >= 2 * STEPS_PER_EPOCH]
  d = _write(tmp_path, "resumed", _config(num_epochs=6), first + resumed)
  expected = {}
  for r in first + resumed:  # later line wins per (kind, step)
    kind = "eval" if "eval/top1" in r else "train"
    expected[(kind, r["step"])] = r
  run = report.load_run(d)
  evals = sorted((s, r) for (k, s), r in expected.items() if k == "eval")
  assert run.evals == [r for _, r in evals]
  assert [e["eval/top1"] for e in run.evals] == [0.30, 0.41, 0.46, 0.50, 0.52, 0.56]
  trains = sorted((s, r) for (k, s), r in expected.items() if k == "train")
  assert run.train == [r for _, r in trains]
  s = report.run_summary(run)
  assert s["status"] == "complete" and s["best_top1"] == pytest.approx(56.0)


def test_resume_drops_lines_of_abandoned_steps(tmp_path):
  first = _lines([0.30, 0.40, 0.45, 0.47])
  # Resumed from the end of epoch 2 and, still running, has logged only epoch 3 so far.
  resumed = [r for r in _lines([0.31, 0.41, 0.44], seed=3) if r["step"] > 2 * STEPS_PER_EPOCH]
  run = report.load_run(_write(tmp_path, "running", _config(num_epochs=6), first + resumed))
  assert [e["eval/top1"] for e in run.evals] == [0.30, 0.40, 0.44]
  assert max(t["step"] for t in run.train) == 3 * STEPS_PER_EPOCH
  assert report.run_summary(run)["best_top1"] == pytest.approx(44.0)


def test_cut_line_glued_to_next_record(tmp_path):
  records = _lines([0.5, 0.6])
  d = _write(tmp_path, "glued", _config(num_epochs=2), records)
  path = os.path.join(d, "metrics.jsonl")
  lines = open(path).read().splitlines()
  lines[-1] = '{"step": 19, "train/lo' + lines[-1]  # a killed write, then the resumed run
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  run = report.load_run(d)
  assert len(run.warnings) == 1 and ":6:" in run.warnings[0]
  assert run.evals[-1]["eval/top1"] == 0.6


def test_non_finite_values_give_strict_json(tmp_path):
  records = _lines([0.5, 0.6])
  records[0]["train/loss"] = "nan"
  records[1]["train/kd"] = "inf"
  d = _write(tmp_path, "nan", _config(num_epochs=2), records)
  report.write_report([d], str(tmp_path / "out"))

  def reject(token):
    raise AssertionError(f"non-standard JSON constant {token}")
  summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=reject)
  assert summary["runs"][0]["final_top1"] == pytest.approx(60.0)
  assert np.isnan(report.load_run(d).train[0]["train/loss"])


def test_published_numbers_beside_matching_settings(tmp_path):
  last5 = list(range(236, 241))  # complete 240-epoch runs (only the last epochs logged)

  def write(name, seed, **kw):
    return _write(tmp_path, name, _config(num_epochs=240, **kw), _lines(_top1s(seed),
                                                                        epochs=last5))
  dirs = [write("kd", 0), write("dkd", 1, method="dkd"), write("kdls", 2, standardize=True),
          write("rkkd", 3, method="rkkd", base_method="dkd"),
          write("ce", 4, method="ce", teacher="")]
  out = tmp_path / "out"
  assert report.main(dirs + ["--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  md = (out / "report.md").read_text()
  cases = {"kd": (73.33, "R", "last", _top1s(0)), "dkd": (76.32, "R", "best", _top1s(1)),
           "kd+ls": (76.62, "R:ls", "best", _top1s(2)), "ce": (72.50, "R:crd", "last",
                                                               _top1s(4))}
  for method, (top1, tag, conv, ours) in cases.items():
    row = _setting_row(summary, method)
    assert [(p["top1"], p["source"], p["convention"]) for p in row["published"]] == [
        (top1, tag, conv)]
    mine = 100 * (max(ours) if conv == "best" else ours[-1])
    assert row["published"][0]["delta"] == pytest.approx(mine - top1)
    teacher = "resnet32x4" if method != "ce" else "–"
    line = _md_row(md, method, teacher, "resnet8x4")
    assert f"{top1:g} `{tag}` {conv}" in line
    assert f"{mine - top1:+.2f} ({conv})" in line
  assert _setting_row(summary, "rkkd(dkd)")["published"] == []
  assert "`" not in _md_row(md, "rkkd(dkd)", "resnet32x4", "resnet8x4")


def test_published_number_without_delta_for_shorter_runs(tmp_path):
  d = _write(tmp_path, "short", _config(method="dkd", num_epochs=5), _lines(_top1s(0)))
  out = tmp_path / "out"
  assert report.main([d, "--out", str(out)]) == 0
  (pub,) = _setting_row(json.loads((out / "summary.json").read_text()), "dkd")["published"]
  assert (pub["top1"], pub["comparable"], pub["delta"]) == (76.32, False, None)
  line = _md_row((out / "report.md").read_text(), "dkd", "resnet32x4", "resnet8x4")
  assert "76.32 `R` best" in line and "n/a (5 vs 240 epochs)" in line


def test_settings_split_by_loss_hyperparameters(tmp_path):
  dirs = [_write(tmp_path, f"t{t}", _config(temperature=t), _lines(_top1s(int(t))))
          for t in (2.0, 4.0)]
  rows = report.summarize([report.load_run(d) for d in dirs])
  assert sorted(r["hparams"] for r in rows) == ["temperature=2.0", "temperature=4.0"]
  assert all(r["n"] == 1 and r["best_top1"]["std"] is None for r in rows)


def test_missing_files_name_the_path(tmp_path, capsys):
  d = tmp_path / "not_a_run"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(_config()))
  assert report.main([str(d)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(d / "metrics.jsonl") in err[0]
  with pytest.raises(report.ReportError, match="config.json"):
    report.load_run(str(tmp_path))


def test_default_out_is_first_workdir_report(tmp_path, three_seeds):
  dirs, _ = three_seeds
  assert report.main(dirs) == 0
  assert os.path.isfile(os.path.join(dirs[0], "report", "report.md"))
  assert os.path.isfile(os.path.join(dirs[0], "report", "summary.json"))


# ---------------------------------------------------------------------------------------
# kd_jax.published


def test_lookup_uses_registry_names():
  assert [e.top1 for e in published.lookup("cifar100", "dkd", "wrn_40_2", "wrn_16_2")] == [
      76.23, 76.24]
  assert published.lookup("cifar100", "teacher", "", "resnet32x4")[0].top1 == 79.42
  # wrn_40_2 is published as a teacher and is also trained alone as a student.
  assert published.lookup("cifar100", "ce", "", "wrn_40_2")[0].top1 == 75.61
  assert published.lookup("imagenet2012", "kd", "imagenet_resnet50", "MobileNetV1")[0].top1 \
      == 70.50
  assert published.lookup("cifar100", "kd", "vgg13", "resnet8x4") == ()
  assert published.method_key("dkd", "dkd", True) == "dkd+ls"
  assert published.method_key("rkkd", "kd", False) == "rkkd(kd)"
  assert all(e.convention in published.CONVENTIONS for e in published.ENTRIES)
  assert all(s in published.SOURCES for e in published.ENTRIES for s in e.source.split(","))


_COLUMNS = {"KD": "kd", "DKD": "dkd", "RLD": "rld", "KD+LS": "kd+ls", "DKD+LS": "dkd+ls",
            "CTKD": "ctkd", "CTKD+LS": "ctkd+ls", "MLKD": "mlkd", "MLKD+LS": "mlkd+ls",
            "DIST": "dist"}
_TAGGED = re.compile(r"(\d+\.\d+)\s*`([^`]+)`")


def _pair_tables(text):
  """(method, teacher, student, cell, section heading) for sections 2-4 of docs/results.md."""
  for section in text.split("\n## ")[1:]:
    heading = section.splitlines()[0]
    header = None
    for line in section.splitlines():
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if line.startswith("| teacher → student"):
        header = cells
      elif header and line.startswith("|") and "→" in cells[0]:
        teacher, student = (x.strip() for x in cells[0].split("→"))
        for name, cell in zip(header[1:], cells[1:]):
          if name in _COLUMNS:
            yield _COLUMNS[name], teacher, student, cell, heading


def test_published_cifar_pairs_match_results_md():
  """Every tagged number of the KD/DKD/RLD/KD+LS/DKD+LS columns is an entry, and back."""
  text = open(RESULTS_MD, encoding="utf-8").read()
  seen = set()
  for method, teacher, student, cell, heading in _pair_tables(text):
    pairs = _TAGGED.findall(cell)
    if not re.search(r"\d", cell):  # '–': no published value
      continue
    if not pairs:  # untagged cells take the section's tag, e.g. "(all `R:ls`)"
      tag = re.search(r"all `([^`]+)`", heading).group(1)
      pairs = [(n, tag) for n in re.findall(r"\d+\.\d+", cell)]
    for number, tag in pairs:
      entries = published.lookup("cifar100", method, teacher, student)
      match = [e for e in entries if e.top1 == float(number) and e.source == tag]
      assert match, (method, teacher, student, number, tag, entries)
      seen.add(match[0])
  cifar_pairs = [e for e in published.ENTRIES
                 if e.dataset == "cifar100" and e.method not in published.VANILLA]
  assert len(seen) == 139  # 22 same-family, 27 cross-family, 84 LS-grid, 6 DIST entries
  assert set(cifar_pairs) == seen


def test_published_vanilla_and_imagenet_match_results_md():
  """docs/results.md §1 and §6 list exactly the vanilla and ImageNet entries of published.py."""
  text = open(RESULTS_MD, encoding="utf-8").read()
  rows = [l for l in text.splitlines() if l.startswith("| ")]
  short = {"imagenet_resnet34": "ResNet34", "imagenet_resnet50": "ResNet50",
           "imagenet_resnet18": "ResNet18", "MobileNetV1": "MobileNetV1"}
  for e in published.ENTRIES:
    if e.dataset == "cifar100" and e.method in published.VANILLA:
      role = "teacher" if e.method == "teacher" else "student"
      row = f"| {e.student} | {role} | {e.top1:.2f} | `{e.source}` | {e.convention} |"
      assert rows.count(row) == 1, e
    elif e.dataset == "imagenet2012":
      models_cell = (short[e.student] if not e.teacher else
                     f"{short[e.teacher]} → {short[e.student]}")
      cells = [f"| {e.method} | {models_cell} | {v} | `{e.source}` | {e.convention} |"
               for v in {f"{e.top1:.2f}", f"{e.top1:g}"}]
      assert sum(r.startswith(c) for r in rows for c in cells) == 1, (e, cells)


def test_report_module_does_not_import_jax():
  """The notebook renders reports in its kernel next to a TPU run: no JAX there."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = "import sys, kd_jax.report; print('jax' in sys.modules, 'matplotlib' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split() == ["False", "False"]


def test_runs_with_equal_names_get_distinct_labels(tmp_path):
  dirs = [_write(tmp_path / m, "seed0", _config(method=m), _lines(_top1s(0)))
          for m in ("kd", "dkd")]
  out = tmp_path / "out"
  assert report.main(dirs + ["--out", str(out)]) == 0
  md = (out / "report.md").read_text()
  assert "| kd/seed0 | kd |" in md and "| dkd/seed0 | dkd |" in md
