"""Tests of notebooks/colab_tpu.ipynb: its structure, and a top-to-bottom run on CPU.

The run uses the notebook's test mode (KD_JAX_NOTEBOOK_TEST=1: no install, no CIFAR-100).
"""
from __future__ import annotations

import json
import os

import pytest

import testenv  # pylint: disable=g-import-not-at-top

nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_tpu.ipynb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _sources(nb, cell_type="code"):
  return [c.source for c in nb.cells if c.cell_type == cell_type]


def test_notebook_structure():
  nb = _read()
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  assert nb.cells[0].cell_type == "markdown"
  code = _sources(nb)
  assert all(not c.outputs and c.execution_count is None
             for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
  order = ["KD_JAX_NOTEBOOK_TEST", "requirements.txt", "jax.devices()", "configs/smoke.py",
           "configs/kd.py:resnet32x4,resnet8x4", "-m kd_jax.report"]
  positions = [next(i for i, src in enumerate(code) if key in src) for key in order]
  assert positions == sorted(positions), dict(zip(order, positions))
  install = next(src for src in code if "requirements.txt" in src)
  assert "jax[tpu]" in install and "git clone" in install and "if TEST:" in install
  cifar = next(src for src in code if "configs/kd.py" in src)
  assert "if TEST:" in cifar and "--config.num_epochs" in cifar


@pytest.mark.slow
def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  """Executes every cell with nbclient (kernel python3, cwd = repo root)."""
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  monkeypatch.setenv("KD_JAX_NOTEBOOK_TEST", "1")
  monkeypatch.setenv("KD_JAX_NOTEBOOK_WORKROOT", str(tmp_path))
  monkeypatch.setenv("XLA_FLAGS", testenv.xla_flags(1))  # one CPU device, like a user's machine
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = _read()
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
  assert "test mode: install skipped" in text
  assert "test mode: CIFAR-100 run skipped" in text
  out = tmp_path / "report"
  summary = json.loads((out / "summary.json").read_text())
  assert [r["name"] for r in summary["runs"]] == ["smoke"]
  smoke = summary["runs"][0]
  assert smoke["status"] == "complete", smoke
  assert smoke["final_top1"] is not None and 0.0 <= smoke["final_top1"] <= 100.0
  assert (out / "report.md").read_text().startswith("# kd_jax report")
  for name in summary["plots"]:
    assert (out / name).read_bytes()[:8] == PNG_MAGIC
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 3
