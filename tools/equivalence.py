"""The network that ships is the network that trained: each member, rebuilt as the runtime rebuilds it,
must give the softmax the training graph gave on the validation images the run kept for this
(``equivalence.npz``, see ``train/runs.py``). A blocking check of `bcsub package` and `bcsub check RUN_DIR`."""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from tools.validate import ValidationReport

# The largest difference of any class probability allowed between the training graph and the shipped one.
TOLERANCE = 1e-4
CHECK_NAME = "same network as trained"
_module_ids = itertools.count()


@dataclass
class MemberEquivalence:
    """One member: the largest probability difference on ``n`` images and the accuracy of both graphs."""

    member: str
    n: int
    max_difference: float
    trained_accuracy: float
    shipped_accuracy: float

    @property
    def ok(self) -> bool:
        return self.max_difference <= TOLERANCE

    def describe(self) -> str:
        return (f"{self.member}: max |p difference| {self.max_difference:.1g} on {self.n} validation images, "
                f"accuracy trained {self.trained_accuracy:.3f}, shipped {self.shipped_accuracy:.3f}")


def import_runtime(program: Path) -> ModuleType:
    """The ``model.py`` of an unzipped submission, imported from its file (a new module on every call)."""
    spec = importlib.util.spec_from_file_location(f"bcsub_shipped_model_{next(_module_ids)}", program / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_member(runtime: ModuleType, network, reference: dict, member: str) -> MemberEquivalence:
    """Run ``network`` through ``runtime``'s own prediction path (identity view) on the kept images."""
    probs = runtime.TTAEnsemble([network], views=("identity",)).predict_proba(reference["images"])
    labels = reference["labels"]
    return MemberEquivalence(member, len(labels), float(np.max(np.abs(probs - reference["probs"]), initial=0.0)),
                             float(np.mean(reference["probs"].argmax(1) == labels)),
                             float(np.mean(probs.argmax(1) == labels)))


def member_name(run_dir: Path) -> str:
    """A member as the table names it: its folder and the one above (``runs/cpu``, ``cpu/polished``)."""
    return "/".join(Path(run_dir).parts[-2:])


def check_equivalence(runtime: ModuleType, networks: list, references: list[dict | None], names: list[str],
                      report: ValidationReport) -> list[MemberEquivalence]:
    """One row in ``report``: every member with a reference must match it within ``TOLERANCE`` (blocking);
    members of runs trained before references were kept are listed as not checked (a warning)."""
    results = [compare_member(runtime, net, ref, name)
               for net, ref, name in zip(networks, references, names) if ref is not None]
    unchecked = [name for ref, name in zip(references, names) if ref is None]
    failed = [r for r in results if not r.ok]
    if failed:
        report.add(CHECK_NAME, False, "; ".join(r.describe() for r in failed)
                   + f" (tolerance {TOLERANCE:g}): the shipped network computes something else than the one trained")
    elif results:
        worst = max(results, key=lambda r: r.max_difference)
        detail = (f"{len(results)} member(s) within {TOLERANCE:g}; worst: {worst.describe()}"
                  + (f"; not checked: {', '.join(unchecked)}" if unchecked else ""))
        report.add(CHECK_NAME, True, detail)
    if unchecked and not results:
        report.add(CHECK_NAME, False, f"not checked: {', '.join(unchecked)} kept no training-graph predictions "
                   "(trained before bcsub kept them); retrain to check", advisory=True)
    return results
