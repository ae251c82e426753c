"""The headline campaign (benchmarks/campaign.py) on tiny components: every stage end to end, a rerun that does no
work, a run killed mid-way that continues where it stopped, plateau detection, the estimate, and rendering that
refuses to publish an unfinished table."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from diffusers_agdm.data import LabelledImages
from diffusers_agdm.evaluation import execution
from dummies import CLASSES, dummy_images, dummy_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import campaign  # noqa: E402
import campaign_publish  # noqa: E402

CARD = """---
license: apache-2.0
model-index:
- name: test/agdm
  results:
  - task:
      type: image-classification
    dataset:
      name: mnist
      type: mnist
      split: test
    metrics:
    - type: robust_accuracy
      value: 0.4912
      name: robust accuracy (latent, withdrawn PGD-10 CE upper bound, Linf eps=0.3, 512 images)
---

# card

## Components
"""


def tiny_plan(root: Path) -> "campaign.CampaignPlan":
    shape = campaign.Shape
    return campaign.CampaignPlan(
        study_start=0, study_images=2, table_start=2, table_images=3,
        ladder=(shape(1, 1, 1, 0), shape(2, 1, 1, 0), shape(4, 1, 1, 0)), variants=(shape(1, 2, 1, 0),),
        settings={"batch_size": 2, "rescore_runs": 3, "selection_runs": 2}, autoattack=True, tolerance=1.0,
        root=root)


def tiny_data(pipe, n=5) -> LabelledImages:
    images = dummy_images(n, seed=3)
    with torch.no_grad():
        labels = pipe.classifier_logits(images).argmax(-1)
    return LabelledImages(images, labels, [f"c{i}" for i in range(CLASSES)], "random")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    pipe = dummy_pipeline()
    data = tiny_data(pipe)
    plan = tiny_plan(root / "store")
    verdict = campaign.run_campaign(pipe, data, plan, seed=0, say=lambda _: None)
    return pipe, data, plan, verdict, root


def test_runs_every_stage_end_to_end(finished, tmp_path):
    pipe, data, plan, verdict, root = finished
    # tolerance 1.0: the first doubling passes, so B is the first budget; the ladder is still climbed to its top.
    assert verdict["found"] and verdict["budget"] == plan.ladder[0].budget
    assert (plan.root / "study" / f"none-{plan.ladder[2].name}").exists()
    assert verdict["beyond"] and f"from {plan.ladder[0].budget} to {plan.ladder[2].budget}" in verdict["beyond"]
    card, readme = tmp_path / "README.md", tmp_path / "main.md"
    card.write_text(CARD)
    readme.write_text(f"intro\n{campaign_publish.STATUS_START}\nold\n{campaign_publish.STATUS_END}\nrest\n")
    summary = campaign.render(plan, 0, {"units_done": 1, "units_total": 1, "cpu_hours_left": 0.0},
                              results_dir=tmp_path, card=card, readme=readme, results_md=False)
    assert summary["finished"] and (tmp_path / campaign.SUMMARY_NAME).is_file()
    assert (tmp_path / campaign.PLOT_NAME).is_file()
    table = summary["table"]
    assert table["autoattack_standard"] == campaign.autoattack_available()
    assert table["n"] == 3 and set(table["rows"]) >= {"undefended", "robust-classifier", "none", "latent"}
    diff = table["differences"]["latent - none"]["majority"]
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]
    assert summary["study"]["points"] and {p["budget"] for p in summary["study"]["points"]} == {1, 2, 4}
    # The sanity checks of random dummy weights may fail: published only when they pass.
    text = card.read_text()
    assert "withdrawn" not in text.split("---", 2)[1]  # out of the metadata in any case
    if campaign_publish.publishable(summary):
        assert "split: heldout" in text and "K=3, n=3" in text and "latent guidance keeps" in readme.read_text()
    else:
        assert "model-index" not in text and "not yet measured" in readme.read_text()


def test_rerun_does_no_work(finished, monkeypatch):
    pipe, data, plan, _, _ = finished

    def refuse(*args, **kwargs):
        raise AssertionError("a finished unit was computed again")

    monkeypatch.setattr(execution.UnitRunner, "run", refuse)
    campaign.run_campaign(pipe, data, plan, seed=0, say=lambda _: None)
    est = campaign.estimate(pipe, data, plan, 0, CLASSES)
    assert est["units_done"] == est["units_total"] > 0 and est["cpu_hours_left"] == 0


def test_killed_campaign_continues_where_it_stopped(finished, tmp_path, monkeypatch):
    pipe, data, plan, _, _ = finished
    killed = tiny_plan(tmp_path / "store")
    real, calls = execution.UnitRunner.run, []

    def dies_after_five(self, *args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(execution.UnitRunner, "run", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        campaign.run_campaign(pipe, data, killed, seed=0, say=lambda _: None)
    monkeypatch.setattr(execution.UnitRunner, "run", real)
    est = campaign.estimate(pipe, data, killed, 0, CLASSES)
    assert est["units_done"] == 5 < est["units_total"]
    campaign.run_campaign(pipe, data, killed, seed=0, say=lambda _: None)
    resumed = campaign.summarize(killed, 0)
    reference = campaign.summarize(plan, 0)
    for part in (resumed, reference):
        part.pop("machine")
        part["table"].pop("wall_time_s")
        for row in part["table"]["rows"].values():
            row.pop("compute_seconds")
        for point in part["study"]["points"]:
            point.pop("compute_seconds"), point.pop("wall_time_s")
    assert resumed == reference  # same numbers as the run that was never interrupted


def test_estimate_prints_before_any_work(tmp_path, capsys):
    pipe = dummy_pipeline()
    data = tiny_data(pipe)
    plan = tiny_plan(tmp_path / "empty")
    est = campaign.estimate(pipe, data, plan, 0, CLASSES)
    assert est["units_done"] == 0 and est["units_total"] > 0 and est["cpu_hours_left"] > 0
    assert not est["table_budget_known"] and est["table_budget"] == plan.ladder[-1].budget
    print(campaign.format_estimate(est))
    out = capsys.readouterr().out
    assert "0 of" in out and "CPU-hours left" in out and "study" in out and "table" in out


def _levels(*curves):
    """Ladder levels from per-budget robust counts of 10 images (one defense, every score the same)."""
    levels = []
    for budget, robust in curves:
        verdicts = [True] * robust + [False] * (10 - robust)
        levels.append((budget, {"latent": dict.fromkeys(campaign.SCORES, verdicts)}))
    return levels


def test_plateau_found_on_synthetic_records():
    verdict = campaign.plateau(_levels((50, 8), (100, 6), (200, 6), (400, 6)), tolerance=0.02)
    assert verdict["found"] and verdict["budget"] == 100
    assert verdict["steps"][0]["moves"][0]["robust_to_broken"] == 2 and not verdict["steps"][0]["passed"]


def test_plateau_states_the_move_from_b_to_the_top():
    verdict = campaign.plateau(_levels((50, 8), (100, 6), (200, 6), (400, 5)), tolerance=0.02)
    assert verdict["budget"] == 100 and "-10.0 points from 100 to 400" in verdict["beyond"]
    assert "from there to the top of the ladder" in verdict["verdict"]


def test_no_plateau_names_the_drift():
    verdict = campaign.plateau(_levels((50, 9), (100, 7), (200, 5)), tolerance=0.02)
    assert not verdict["found"] and verdict["budget"] is None
    assert "no plateau up to 200" in verdict["verdict"] and "latent" in verdict["drift"]
    assert "-20.0 points from 100 to 200" in verdict["drift"] and "2 images robust -> broken" in verdict["drift"]


def test_paired_changes_count_both_ways():
    before = [True, True, False, False]
    after = [False, True, True, False]  # one lost, one gained: no net move, but both are counted
    levels = [(1, {"none": dict.fromkeys(campaign.SCORES, before)}),
              (2, {"none": dict.fromkeys(campaign.SCORES, after)})]
    move = campaign.plateau(levels)["steps"][0]["moves"][0]
    assert (move["robust_to_broken"], move["broken_to_robust"], move["move"]) == (1, 1, 0.0)


def test_rendering_refuses_to_publish_an_unfinished_table(finished, tmp_path):
    _, _, plan, _, _ = finished
    partial = tmp_path / "store"
    shutil.copytree(plan.root, partial)
    shutil.rmtree(partial / "table")  # the table has not run yet
    card, readme = tmp_path / "README.md", tmp_path / "main.md"
    card.write_text(CARD)
    readme.write_text(f"{campaign_publish.STATUS_START}\n{campaign_publish.STATUS_END}\n")
    plan_partial = tiny_plan(partial)
    summary = campaign.render(plan_partial, 0, {"units_done": 7, "units_total": 9, "cpu_hours_left": 1.0},
                              results_dir=tmp_path, card=card, readme=readme, results_md=False)
    assert not summary["finished"] and summary["table"] is None
    text = card.read_text()
    assert "model-index" not in text and "robust_accuracy" not in text
    assert "not yet measured; campaign in progress (7 of 9 units)" in text
    assert "History:" in text and "49.1%" in text  # the withdrawn figure: a labelled line in the text only
    assert "not yet measured" in readme.read_text()
    stored = json.loads((tmp_path / campaign.SUMMARY_NAME).read_text())
    assert stored["table"] is None and stored["progress"]["units_done"] == 7
    from diffusers_agdm.commands.info import campaign_status

    assert campaign_status(text).startswith("Robust accuracy: not yet measured")


def test_published_card_metadata_is_valid(finished, tmp_path):
    """A finished table (its sanity checks passed) publishes metadata that huggingface_hub parses: one result for
    mnist/heldout, unique names, n, K and the budget in every name, no withdrawn metric."""
    from huggingface_hub import ModelCard
    from test_cards import check_card_metadata

    _, _, plan, _, _ = finished
    summary = campaign.summarize(plan, 0, {"units_done": 1, "units_total": 1, "cpu_hours_left": 0.0})
    summary["table"]["sanity_passed"] = True  # as a real run whose undefended classifier collapses
    card = tmp_path / "README.md"
    card.write_text(CARD)
    campaign_publish.publish_card(summary, card)
    metrics = check_card_metadata(ModelCard.load(card))
    assert metrics == 2 * 3 * len(summary["table"]["rows"])
    text = card.read_text()
    assert "split: heldout" in text and "withdrawn" not in text.split("---", 2)[1]
    assert "latent guidance keeps" in text and "History:" in text
    index = ModelCard.load(card).data.to_dict()["model-index"]
    assert all(f"n={summary['table']['n']}" in m["name"] and "K=3" in m["name"]
               for m in index[0]["results"][0]["metrics"])
