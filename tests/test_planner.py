"""The time budget as a plan: epoch allocation, re-planning on a fake clock, the planned cosine schedule,
and a real run whose schedule is cut to fit its budget."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tests.conftest import SAMPLE_TRAIN, run_cli
from train.planner import REPLAN_CHANGE, BudgetPlanner, BudgetShare, PlannedCosineDecay, allocate_epochs


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_budget_for_ten_epochs_plans_at_most_ten_and_keeps_polish():
    plan = allocate_epochs(10 * 30.0, [70, 8], [30.0, 30.0], [1, 1])
    assert sum(plan) <= 10 and plan[1] >= 1 and plan[0] >= 8


def test_allocation_keeps_everything_when_it_fits_and_respects_minimums():
    assert allocate_epochs(1e9, [70, 8], [30.0, 10.0], [1, 1]) == [70, 8]
    assert allocate_epochs(0.0, [70, 8], [30.0, 10.0], [1, 1]) == [1, 1]
    assert allocate_epochs(700.0, [70, 8], [20.0, 10.0], [1, 1]) == [33, 4]  # both at 0.47 of their epochs


def test_planner_replans_on_first_measurement_and_on_speed_changes_only(tmp_path):
    clock = FakeClock()
    planner = BudgetPlanner.for_stages(30 * 60, [("full", 70), ("polish", 8)], tmp_path / "plan.json", clock=clock)
    assert planner.observe("full", 30.0, "first steps")  # 30 min at 30 s/epoch: about 60 epochs minus the reserve
    full, polish = planner.stage("full"), planner.stage("polish")
    assert full.planned + polish.planned <= (30 * 60 - planner.reserve_s) / 30.0
    assert polish.planned >= 1
    first = full.planned
    assert not planner.observe("full", 30.0 * (1 + REPLAN_CHANGE / 2), "epoch 1")  # within 20%: keep the plan
    assert planner.observe("full", 60.0, "epoch 2")  # the machine got twice as slow: re-plan
    assert planner.stage("full").planned < first
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert [p["reason"] for p in saved["plans"]] == ["first steps", "epoch 2"]
    assert saved["stages"][0]["planned"] == planner.stage("full").planned


def test_a_resumed_plan_counts_the_time_already_used(tmp_path):
    clock = FakeClock()
    planner = BudgetPlanner.for_stages(600, [("full", 20)], tmp_path / "plan.json", clock=clock)
    planner.observe("full", 10.0, "first steps")
    clock.now += 400
    planner.epoch_done("full", 12)
    resumed = BudgetPlanner.for_stages(600, [("full", 20)], tmp_path / "plan.json", clock=FakeClock())
    assert resumed.stage("full").done == 12
    assert resumed.left_s() == pytest.approx(200, abs=1)


def test_budget_share_splits_what_is_left_among_members():
    clock = FakeClock()
    share = BudgetShare(30, clock=clock)
    assert share.next(3) == pytest.approx(600)
    clock.now += 900  # the first member used half the time
    assert share.next(2) == pytest.approx(450)
    assert BudgetShare(0).next(1) is None


def test_planned_cosine_matches_keras_and_follows_its_new_length():
    ours = PlannedCosineDecay(2e-3, 1000, warmup_steps=100, alpha=0.01)
    theirs = keras.optimizers.schedules.CosineDecay(2e-4, 900, alpha=0.01, warmup_target=2e-3, warmup_steps=100)
    steps = [0, 50, 100, 400, 999, 1500]
    np.testing.assert_allclose([float(ours(s)) for s in steps], [float(theirs(s)) for s in steps], rtol=1e-5)
    ours.set_total_steps(500)
    assert float(ours(500)) == pytest.approx(2e-5, rel=1e-4)  # the decay now ends at step 500


def test_a_short_budget_cuts_the_schedule_but_runs_every_stage(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(SAMPLE_TRAIN), "--backbone", "tinycnn", "--weights", "none",
                   "--epochs", "200", "--polish-epochs", "20", "--limit", "64", "--batch-size", "16",
                   "--augment", "v1", "--patience", "0", "--time-budget", "1.0", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    stages = {s["name"]: s for s in plan["stages"]}
    assert stages["full"]["planned"] < 200 and stages["polish"]["planned"] >= 1
    assert all(s["done"] == s["planned"] for s in stages.values())
    assert "time plan" in proc.stdout
    assert (out / "ensemble.json").is_file()  # the snapshot pair: polishing ran
