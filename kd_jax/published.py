"""Published top-1 accuracies (docs/results.md) as data, with source tags.

Keys use kd_jax names: (dataset, method, teacher, student); `lookup` finds the entries for a run.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

# How a published number was taken. A run is compared under the same convention.
CONVENTIONS: dict[str, str] = {
    "best": "best-epoch, the maximum test top-1 over all epochs (mdistiller lineage: DKD, "
            "LS, RLD; DKD numbers average 5 runs)",
    "last": "last-epoch, the test top-1 after the final epoch (RepDistiller/CRD, and the KD "
            "baselines other READMEs copy from it)",
    "weights": "accuracy of released pretrained weights (torchvision); compared with our "
               "last epoch",
}

# Source tags of docs/results.md.
SOURCES: dict[str, str] = {
    "R": "framework README: the same value in R:md, R:ls and R:crd wherever a README lists "
         "the pair",
    "R:md": "megvii-research/mdistiller README (DKD paper tables)",
    "R:ls": "sunshangquan/logit-standardization-KD README (LS paper tables)",
    "R:crd": "HobbitLong/RepDistiller README (CRD paper tables)",
    "R:td": "torchdistill ImageNet ResNet18 KD benchmark table",
    "R:ctkd": "zhengli97/CTKD README (CTKD paper tables)",
    "R:dist": "hunto/DIST_KD README (DIST paper tables; CIFAR values are means over runs)",
    "R:tv": "torchvision model documentation (IMAGENET1K_V1 weights)",
    "P": "read directly in the paper",
    "T": "third-party transcription (paper notes, DSKD README, issue reports)",
    "U": "unknown: recalled, not traceable to a checked source; unverified",
}

# Methods that train one model alone with cross-entropy; a published vanilla number applies
# to either (wrn_40_2 is a teacher in most pairs and a student in one).
VANILLA = ("teacher", "ce")


@dataclasses.dataclass(frozen=True)
class Published:
  """One published top-1 (%) for (dataset, method, teacher, student)."""
  dataset: str
  method: str      # 'teacher', 'ce', a method ('kd', 'ctkd', ...), its '+ls' or 'rkkd(...)' form
  teacher: str     # '' for 'teacher'/'ce'
  student: str     # the trained model
  top1: float
  source: str      # tag(s) exactly as in docs/results.md, e.g. 'R:md,R:ls'
  convention: str  # a key of CONVENTIONS
  note: str = ""
  epochs: Optional[int] = None  # training length behind the number (None: released weights)


def _c(method, teacher, student, top1, source, convention, note=""):
  """CIFAR-100, 240 epochs (docs/recipes.md §1.1)."""
  return Published("cifar100", method, teacher, student, top1, source, convention, note, 240)


def _i(method, teacher, student, top1, source, convention, note=""):
  """ImageNet, 100 epochs (docs/recipes.md §2); released weights carry no epoch count."""
  return Published("imagenet2012", method, teacher, student, top1, source, convention, note,
                   None if convention == "weights" else 100)


_KD_FROM_CRD = "the CRD paper's last-epoch KD baseline, reprinted by the other READMEs"
_KD_LS_ONLY = "KD baseline listed only by the LS README (mdistiller lineage, best-epoch)"
_DSKD = "RLD value from the DSKD README transcription"

# docs/results.md §1: CIFAR-100 teachers and vanilla students (all R:crd, last-epoch).
_VANILLA_CIFAR = (
    _c("teacher", "", "resnet32x4", 79.42, "R:crd", "last"),
    _c("teacher", "", "ResNet50", 79.34, "R:crd", "last"),
    _c("teacher", "", "wrn_40_2", 75.61, "R:crd", "last"),
    _c("teacher", "", "vgg13", 74.64, "R:crd", "last"),
    _c("teacher", "", "resnet110", 74.31, "R:crd", "last"),
    _c("teacher", "", "resnet56", 72.34, "R:crd", "last"),
    _c("ce", "", "wrn_16_2", 73.26, "R:crd", "last"),
    _c("ce", "", "resnet8x4", 72.50, "R:crd", "last"),
    _c("ce", "", "wrn_40_1", 71.98, "R:crd", "last"),
    _c("ce", "", "ShuffleV2", 71.82, "R:crd", "last"),
    _c("ce", "", "resnet32", 71.14, "R:crd", "last"),
    _c("ce", "", "vgg8", 70.36, "R:crd", "last"),
    _c("ce", "", "ShuffleV1", 70.50, "R:crd", "last"),
    _c("ce", "", "resnet20", 69.06, "R:crd", "last"),
    _c("ce", "", "MobileNetV2", 64.60, "R:crd", "last"),
)

# docs/results.md §2: same-family pairs. KD/DKD columns `R`; RLD `T` (mdistiller lineage).
_SAME_FAMILY = (
    _c("kd", "resnet32x4", "resnet8x4", 73.33, "R", "last", _KD_FROM_CRD),
    _c("kd", "vgg13", "vgg8", 72.98, "R", "last", _KD_FROM_CRD),
    _c("kd", "wrn_40_2", "wrn_40_1", 73.54, "R", "last", _KD_FROM_CRD),
    _c("kd", "wrn_40_2", "wrn_16_2", 74.92, "R", "last", _KD_FROM_CRD),
    _c("kd", "resnet56", "resnet20", 70.66, "R", "last", _KD_FROM_CRD),
    _c("kd", "resnet110", "resnet32", 73.08, "R", "last", _KD_FROM_CRD),
    _c("kd", "resnet110", "resnet20", 70.67, "R:ls,R:crd", "last", _KD_FROM_CRD),
    _c("dkd", "resnet32x4", "resnet8x4", 76.32, "R", "best"),
    _c("dkd", "vgg13", "vgg8", 74.68, "R", "best"),
    _c("dkd", "wrn_40_2", "wrn_40_1", 74.81, "R", "best"),
    _c("dkd", "wrn_40_2", "wrn_16_2", 76.23, "R:md", "best"),
    _c("dkd", "wrn_40_2", "wrn_16_2", 76.24, "R:ls", "best"),
    _c("dkd", "resnet56", "resnet20", 71.97, "R", "best"),
    _c("dkd", "resnet110", "resnet32", 74.11, "R", "best"),
    _c("dkd", "resnet110", "resnet20", 71.06, "R:ls", "best"),
    _c("rld", "resnet32x4", "resnet8x4", 76.64, "T", "best"),
    _c("rld", "vgg13", "vgg8", 74.93, "T", "best"),
    _c("rld", "wrn_40_2", "wrn_40_1", 74.88, "T", "best"),
    _c("rld", "wrn_40_2", "wrn_16_2", 76.02, "T", "best", "DSKD README only"),
    _c("rld", "resnet56", "resnet20", 72.00, "T", "best"),
    _c("rld", "resnet110", "resnet32", 74.02, "T", "best"),
    _c("rld", "resnet110", "resnet20", 71.67, "T", "best"),
)

# docs/results.md §3: cross-family pairs.
_CROSS_FAMILY = (
    _c("kd", "resnet32x4", "ShuffleV2", 74.45, "R:md,R:ls,R:crd", "last", _KD_FROM_CRD),
    _c("kd", "resnet32x4", "wrn_16_2", 74.90, "R:ls", "best", _KD_LS_ONLY),
    _c("kd", "resnet32x4", "wrn_40_2", 77.70, "R:ls", "best", _KD_LS_ONLY),
    _c("kd", "wrn_40_2", "resnet8x4", 73.97, "R:ls", "best", _KD_LS_ONLY),
    _c("kd", "wrn_40_2", "MobileNetV2", 68.36, "R:ls", "best", _KD_LS_ONLY),
    _c("kd", "vgg13", "MobileNetV2", 67.37, "R:md,R:ls,R:crd", "last", _KD_FROM_CRD),
    _c("kd", "ResNet50", "MobileNetV2", 67.35, "R:md,R:ls,R:crd", "last", _KD_FROM_CRD),
    _c("kd", "resnet32x4", "ShuffleV1", 74.07, "R:md,R:crd", "last", _KD_FROM_CRD),
    _c("kd", "wrn_40_2", "ShuffleV1", 74.83, "R:md,R:crd", "last", _KD_FROM_CRD),
    _c("kd", "ResNet50", "vgg8", 73.81, "R:crd", "last"),
    _c("dkd", "resnet32x4", "ShuffleV2", 77.07, "R:md,R:ls", "best",
       "the mdistiller README mislabels this column MobileNet-V2"),
    _c("dkd", "resnet32x4", "wrn_16_2", 75.70, "R:ls", "best"),
    _c("dkd", "resnet32x4", "wrn_40_2", 78.46, "R:ls", "best"),
    _c("dkd", "wrn_40_2", "resnet8x4", 75.56, "R:ls", "best"),
    _c("dkd", "wrn_40_2", "MobileNetV2", 69.28, "R:ls", "best"),
    _c("dkd", "wrn_40_2", "MobileNetV2", 69.38, "T", "best", "DSKD README"),
    _c("dkd", "vgg13", "MobileNetV2", 69.71, "R:md,R:ls", "best"),
    _c("dkd", "ResNet50", "MobileNetV2", 70.35, "R:md,R:ls", "best"),
    _c("dkd", "resnet32x4", "ShuffleV1", 76.45, "R:md", "best"),
    _c("dkd", "wrn_40_2", "ShuffleV1", 76.70, "R:md", "best"),
    _c("rld", "resnet32x4", "ShuffleV2", 77.56, "T", "best", _DSKD),
    _c("rld", "resnet32x4", "wrn_16_2", 76.14, "T", "best", _DSKD),
    _c("rld", "resnet32x4", "wrn_40_2", 78.91, "T", "best", _DSKD),
    _c("rld", "wrn_40_2", "resnet8x4", 76.12, "T", "best", _DSKD),
    _c("rld", "wrn_40_2", "MobileNetV2", 69.75, "T", "best", _DSKD),
    _c("rld", "vgg13", "MobileNetV2", 69.97, "T", "best", _DSKD),
    _c("rld", "ResNet50", "MobileNetV2", 70.76, "T", "best", _DSKD),
)

# docs/results.md §4: logit standardization (all R:ls, best-epoch): (KD+LS, DKD+LS).
_LS_GRID: dict[tuple[str, str], tuple[float, float]] = {
    ("resnet32x4", "resnet8x4"): (76.62, 77.01),
    ("vgg13", "vgg8"): (74.36, 74.81),
    ("wrn_40_2", "wrn_40_1"): (74.37, 74.89),
    ("wrn_40_2", "wrn_16_2"): (76.11, 76.39),
    ("resnet56", "resnet20"): (71.43, 72.32),
    ("resnet110", "resnet32"): (74.17, 74.29),
    ("resnet110", "resnet20"): (71.48, 71.85),
    ("resnet32x4", "ShuffleV2"): (75.56, 77.37),
    ("resnet32x4", "wrn_16_2"): (75.26, 76.19),
    ("resnet32x4", "wrn_40_2"): (77.92, 78.95),
    ("wrn_40_2", "resnet8x4"): (77.11, 76.75),
    ("wrn_40_2", "MobileNetV2"): (69.23, 70.01),
    ("vgg13", "MobileNetV2"): (68.61, 69.98),
    ("ResNet50", "MobileNetV2"): (69.02, 70.45),
}
_LS = tuple(
    _c(method, t, s, top1, "R:ls", "best")
    for (t, s), pair in _LS_GRID.items() for method, top1 in zip(("kd+ls", "dkd+ls"), pair))

# docs/results.md §4, the rest of the LS grid (all R:ls, best-epoch):
# (CTKD, CTKD+LS, MLKD, MLKD+LS). The CTKD README lists six of the CTKD values too (R:ctkd).
_LS_GRID_CTKD_MLKD: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("resnet32x4", "resnet8x4"): (73.39, 76.67, 77.08, 78.28),
    ("vgg13", "vgg8"): (73.52, 74.47, 75.18, 75.22),
    ("wrn_40_2", "wrn_40_1"): (73.93, 74.58, 75.35, 75.56),
    ("wrn_40_2", "wrn_16_2"): (75.45, 76.08, 76.63, 76.95),
    ("resnet56", "resnet20"): (71.19, 71.34, 72.19, 72.33),
    ("resnet110", "resnet32"): (73.52, 74.01, 74.11, 74.32),
    ("resnet110", "resnet20"): (70.99, 71.39, 71.89, 72.27),
    ("resnet32x4", "ShuffleV2"): (75.37, 76.18, 78.44, 78.76),
    ("resnet32x4", "wrn_16_2"): (74.57, 75.16, 76.52, 77.53),
    ("resnet32x4", "wrn_40_2"): (77.66, 77.99, 79.26, 79.66),
    ("wrn_40_2", "resnet8x4"): (74.61, 77.03, 77.33, 77.68),
    ("wrn_40_2", "MobileNetV2"): (68.34, 69.53, 70.78, 71.61),
    ("vgg13", "MobileNetV2"): (68.50, 68.98, 70.57, 70.94),
    ("ResNet50", "MobileNetV2"): (68.67, 69.36, 71.04, 71.19),
}
_IN_CTKD_README = {("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2"),
                   ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet110", "resnet20")}
_CTKD_NOTE = "the CTKD paper's convention is not stated; its train script tracks best_acc"
_LS_CTKD_MLKD = tuple(
    _c(method, t, s, top1,
       "R:ctkd,R:ls" if method == "ctkd" and (t, s) in _IN_CTKD_README else "R:ls", "best",
       _CTKD_NOTE if method == "ctkd" else "")
    for (t, s), row in _LS_GRID_CTKD_MLKD.items()
    for method, top1 in zip(("ctkd", "ctkd+ls", "mlkd", "mlkd+ls"), row))

# docs/results.md §8: DIST on CIFAR-100 (R:dist; means over runs, their std in the note).
_DIST_NOTE = ("mean ± {} over runs (count not stated); convention assumed: the trainer keeps "
              "the best checkpoints by top-1")
_DIST_CIFAR = (
    _c("dist", "wrn_40_2", "wrn_40_1", 74.43, "R:dist", "best", _DIST_NOTE.format(0.24)),
    _c("dist", "resnet56", "resnet20", 71.75, "R:dist", "best", _DIST_NOTE.format(0.30)),
    _c("dist", "resnet32x4", "resnet8x4", 76.31, "R:dist", "best", _DIST_NOTE.format(0.19)),
    _c("dist", "ResNet50", "MobileNetV2", 68.66, "R:dist", "best", _DIST_NOTE.format(0.23)),
    _c("dist", "resnet32x4", "ShuffleV1", 76.34, "R:dist", "best", _DIST_NOTE.format(0.18)),
    _c("dist", "resnet32x4", "ShuffleV2", 77.35, "R:dist", "best", _DIST_NOTE.format(0.25)),
)

# docs/results.md §6: ImageNet top-1.
_R34, _R18 = "imagenet_resnet34", "imagenet_resnet18"
_R50, _MV1 = "imagenet_resnet50", "MobileNetV1"
_IMAGENET = (
    _i("teacher", "", _R34, 73.314, "R:tv", "weights"),
    _i("teacher", "", _R34, 73.31, "U", "weights", "as listed in the DKD paper tables"),
    _i("teacher", "", _R50, 76.13, "R:tv", "weights"),
    _i("teacher", "", _R50, 76.16, "U", "weights", "as listed in the DKD paper tables"),
    _i("ce", "", _R18, 69.758, "R:tv", "weights", "torchvision ResNet18 V1"),
    _i("ce", "", _R18, 69.75, "U", "weights", "DKD paper"),
    _i("ce", "", _MV1, 68.87, "U", "best", "DKD paper; convention assumed"),
    _i("kd", _R34, _R18, 71.03, "R:md", "best"),
    _i("kd", _R34, _R18, 71.37, "R:td", "best",
       "torchdistill re-run (keeps the best-validation checkpoint)"),
    _i("kd", _R50, _MV1, 70.50, "R:md", "best"),
    _i("kd+ls", _R34, _R18, 71.23, "R:td", "best", "torchdistill re-run"),
    _i("kd+ls", _R34, _R18, 71.42, "R:td", "best",
       "the torchdistill table's value for the original LS work"),
    _i("dkd", _R34, _R18, 71.70, "R:md", "best"),
    _i("dkd", _R50, _MV1, 72.05, "R:md", "best"),
    _i("rld", _R34, _R18, 71.91, "T", "best"),
    _i("rld", _R50, _MV1, 72.75, "T", "best"),
    _i("ctkd", _R34, _R18, 71.32, "R:ctkd", "best",
       "CTKD's own baselines: teacher 73.96, student 70.26, KD 70.83; convention assumed"),
    _i("ctkd(dkd)", _R34, _R18, 71.51, "R:ctkd", "best",
       "CTKD on the DKD base; CTKD's own DKD baseline 71.13; convention assumed"),
    _i("dist", _R34, _R18, 72.07, "R:dist", "best", "convention assumed"),
    _i("dist", _R50, _MV1, 73.24, "R:dist", "best",
       "DIST's MobileNetV1 baseline is 70.13 (not the DKD paper's 68.87); convention assumed"),
)

# Not carried (no kd_jax method or not a training result): LA/RC/LR and DOT columns; the KD
# baselines the CTKD and DIST READMEs reprint; the RLD ablation; issue reports of downloaded
# checkpoints and reproductions; top-5 values; DHKD and RKKD (docs/results.md §7: no verified
# tables). The MLKD README publishes no numbers.
ENTRIES: tuple[Published, ...] = (
    _VANILLA_CIFAR + _SAME_FAMILY + _CROSS_FAMILY + _LS + _LS_CTKD_MLKD + _DIST_CIFAR
    + _IMAGENET)


def method_key(method: str, base_method: str = "", standardize: bool = False,
               ctkd_base: str = "") -> str:
  """The published-table method name of a run: 'kd', 'dkd+ls', 'rkkd(kd)', 'ctkd(dkd)',
  'teacher', ... (ctkd_base: a CTKD run's config.loss.ctkd_base)."""
  name = method
  if method == "ctkd" and ctkd_base == "dkd":
    name = f"ctkd(dkd){'+ls' if standardize else ''}"
  elif method == "rkkd":
    name = f"rkkd({base_method or 'kd'}{'+ls' if standardize else ''})"
  elif standardize:
    name = f"{method}+ls"
  return name


def lookup(dataset: str, method: str, teacher: str, student: str) -> tuple[Published, ...]:
  """All published entries for a setting, in docs/results.md order; () when there are none."""
  methods = VANILLA if method in VANILLA else (method,)
  found = []
  for m in methods:
    for e in ENTRIES:
      if (e.dataset, e.method, e.student) == (dataset, m, student) and (
          m in VANILLA or e.teacher == teacher):
        found.append(e)
  return tuple(found)


def lookup_config(config: Mapping) -> tuple[Published, ...]:
  """Entries matching a run's config.json (method, loss.standardize, teacher, student)."""
  loss = config.get("loss") or {}
  key = method_key(config.get("method", ""), config.get("base_method", ""),
                   bool(loss.get("standardize", False)), loss.get("ctkd_base", ""))
  teacher: Optional[str] = config.get("teacher") or ""
  return lookup(config.get("dataset", ""), key, teacher, config.get("student", ""))
