"""Human-readable output: accuracies in percent, one duration/ETA format, the run summary names
the method and a random teacher, and deliberate library notices are dropped."""
from __future__ import annotations

import json
import logging

from kd_jax import console
from kd_jax.train import metrics as metrics_lib
from kd_jax.train import progress


def test_step_line_percent_and_eta_match_the_progress_bar(tmp_path, capsys):
  w = metrics_lib.MetricWriter(str(tmp_path), total_steps=150)
  w.print_progress(40, {"epoch": 0.5, "train/loss": 4.53598, "train/top1": 0.0125,
                        "eval/top1": 0.015, "eval/top5": 0.0625, "lr": 0.05}, eta_s=88.4)
  w.close()
  line = capsys.readouterr().out.strip()
  assert line == ("step 40/150 | epoch 0.5 | train/loss 4.536 | train/top1 1.25% | "
                  "eval/top1 1.50% | eval/top5 6.25% | lr 0.05 | ETA 1:28"), line
  # The same ETA text as the live progress line and the summary's wall time.
  assert progress.format_duration(88.4) == "1:28"
  assert progress.step_line(1, 2, {}, 3725.0) == "step 1/2 | ETA 1:02:05"
  assert progress.format_metric("teacher/top1", 0.7512) == "teacher/top1 75.12%"
  assert progress.format_metric("eval/loss", 4.537306) == "eval/loss 4.537"
  # metrics.jsonl keeps fractions.
  w = metrics_lib.MetricWriter(str(tmp_path), total_steps=150)
  w.write(40, {"eval/top1": 0.015})
  w.close()
  rec = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rec[-1]["eval/top1"] == 0.015


def _summary(tmp_path, **config):
  (tmp_path / "metrics.jsonl").write_text(
      json.dumps({"step": 60, "epoch": 1.0, "eval/top1": 0.09, "elapsed_s": 30.0}) + "\n")
  (tmp_path / "config.json").write_text(json.dumps(config))
  return progress.run_summary(str(tmp_path)).splitlines()


def test_summary_names_the_method_and_says_when_the_teacher_is_random(tmp_path):
  lines = _summary(tmp_path, method="rkkd", student="resnet8", teacher="resnet8",
                   teacher_checkpoint="random:0")
  assert lines[0].startswith("Done: 60 steps (1 epoch) in 0:30 wall time")
  assert lines[1].startswith("  method rkkd: student resnet8, teacher resnet8 with RANDOM "
                             "weights (teacher_checkpoint='random:0'"), lines
  lines = _summary(tmp_path, method="kd", student="resnet8x4", teacher="resnet32x4",
                   teacher_checkpoint="t.pth")
  assert lines[1] == "  method kd: student resnet8x4, teacher resnet32x4 from t.pth"
  lines = _summary(tmp_path, method="ce", student="resnet8", teacher="",
                   teacher_checkpoint="")
  assert lines[1] == "  method ce: student resnet8"
  assert "best eval top-1  9.00%" in "\n".join(lines)


def test_without_log_records_drops_only_the_named_notice(caplog):
  log = logging.getLogger("absl")
  with caplog.at_level(logging.WARNING, logger="absl"):
    with console.without_log_records("directory is read only"):
      log.warning("Given directory is read only=%s", "/w/checkpoints")
      log.warning("something else")
    log.warning("Given directory is read only=%s", "/w/best")   # outside: kept
  assert [r.getMessage() for r in caplog.records] == ["something else",
                                                      "Given directory is read only=/w/best"]


def test_a_sweep_summary_lists_every_run_in_percent(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"method": "dkd", "student": "resnet8", "teacher": "resnet8",
       "teacher_checkpoint": "random:0", "sweep": "seed=0,1"}))
  for name, top1 in (("seed=0", (0.25, 0.2)), ("seed=1", (0.125, 0.5))):
    (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / name / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "eval/top1": t, "elapsed_s": 65.0}) + "\n"
        for i, t in enumerate(top1)))
  lines = progress.run_summary(str(tmp_path)).splitlines()
  assert lines[0] == f"Done: a sweep of 2 runs, 20 steps each, in 1:05 wall time ({tmp_path})"
  assert "RANDOM weights" in lines[1]
  assert lines[2] == "  seed=0  best eval top-1 25.00% (step 10), last 20.00% (step 20)"
  assert lines[3] == "  seed=1  best eval top-1 50.00% (step 20), last 50.00% (step 20)"
  assert "--run NAME" in lines[4]
