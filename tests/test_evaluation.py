import json

import pytest
import torch
from PIL import Image
from torch import nn

from diffusers_agdm.attacks import BPDAClassifier
from diffusers_agdm.data import LabelledImages
from diffusers_agdm.evaluation import (
    DEFENSES,
    EvaluationConfig,
    SanityCheckError,
    UndefendedClassifier,
    check_converged_paired,
    check_gradient,
    check_huge_eps,
    check_undefended_collapse,
    defense_specs,
    evaluate,
    format_sanity_block,
)
from dummies import CLASSES, dummy_images, dummy_pipeline

# Tiny budgets: these tests check the machinery. On tiny random components the sanity thresholds are not
# meaningful, so they run with allow_failed_sanity unless a test is about the checks themselves.
TINY = dict(steps=2, eot_samples=1, rescore_runs=3, selection_runs=2, batch_size=3, sanity_images=2,
            convergence_checks=("steps", "eot"), num_examples=2, show_progress_bar=False, allow_failed_sanity=True)


def labelled_data(pipe, n=4, seed=0) -> LabelledImages:
    """Random images labelled with the classifier's own predictions, so the undefended clean accuracy is 100%."""
    images = dummy_images(n, seed=seed)
    with torch.no_grad():
        labels = pipe.classifier_logits(images).argmax(-1)
    return LabelledImages(images, labels, [f"c{i}" for i in range(CLASSES)], "random")


# ---------------------------------------------------------------------------------------------------- defenses
def test_the_four_defenses_share_t_star_and_steps_and_differ_only_in_guidance():
    pipe = dummy_pipeline()
    specs = {s.name: s for s in defense_specs(pipe, DEFENSES, guidance_scale=7.0, pixel_guidance_scale=3.0,
                                              strength=0.2, num_inference_steps=2)}
    assert list(specs) == list(DEFENSES)
    none, pixel, latent = specs["none"].settings, specs["pixel"].settings, specs["latent"].settings
    assert (none.guidance.mode, none.guidance.scale, none.strength, none.num_inference_steps) == ("none", 0, 0.2, 2)
    assert (pixel.guidance.mode, pixel.guidance.scale) == ("pixel", 3)
    assert (latent.guidance.mode, latent.guidance.scale) == ("latent", 7)
    assert specs["undefended"].settings is None
    described = {name: spec.describe(pipe) for name, spec in specs.items()}
    first = int(pipe.get_timesteps(2, 0.2)[0])
    for name in ("none", "pixel", "latent"):
        assert (described[name]["strength"], described[name]["num_inference_steps"]) == (0.2, 2)
        assert described[name]["first_timestep"] == first
    # The latent scale defaults to the pipeline's config.
    default = {s.name: s for s in defense_specs(pipe, ("latent",))}["latent"].describe(pipe)
    assert default["guidance_scale"] == pipe.config.guidance_scale
    with pytest.raises(ValueError, match="Unknown defenses"):
        defense_specs(pipe, ("undefended", "jpeg"))
    with pytest.raises(ValueError, match="strength"):
        defense_specs(pipe, ("none",), strength=2.0)


def test_undefended_classifier_is_the_pipeline_classifier():
    pipe = dummy_pipeline()
    x = dummy_images(3)
    model = UndefendedClassifier(pipe)
    torch.testing.assert_close(model(x), pipe.classifier_logits(x))
    assert model.purify(x) is x and next(model.parameters(), None) is not None
    with pytest.raises(ValueError, match="no classifier"):
        UndefendedClassifier(dummy_pipeline(with_classifier=False))


# ---------------------------------------------------------------------------------------------------- sanity checks
def test_threshold_checks_pass_and_fail_where_they_should():
    assert check_undefended_collapse(0.0, 64, "Linf", 0.3).passed
    assert not check_undefended_collapse(0.05, 64, "Linf", 0.3).passed
    assert check_undefended_collapse(0.0, 64, "Linf", 0.3, clean_accuracy=0.9).passed
    assert not check_undefended_collapse(0.0, 64, "Linf", 0.3, clean_accuracy=0.0).passed  # vacuous
    assert check_huge_eps("latent", 0.1, 64, num_classes=10).passed
    assert not check_huge_eps("latent", 0.5, 64, num_classes=10).passed
    block = format_sanity_block([check_undefended_collapse(0.5, 4, "Linf", 0.3)])
    assert "SANITY CHECK FAILED" in block and "[FAILED]" in block


class MaskedDefense(nn.Module):
    """A broken defense: its purification cuts the gradient (as a non-differentiable preprocessor would)."""

    def __init__(self, defended, classify):
        super().__init__()
        self.defended, self.classify = defended, classify

    def reseed(self, seed):
        self.defended.reseed(seed)

    def forward(self, x):
        return self.classify(self.defended.purify(x).detach())


def test_gradient_check_passes_the_real_defense_and_fails_broken_ones():
    pipe = dummy_pipeline("ddpm").to(dtype=torch.float64)
    x, y = dummy_images(1, dtype=torch.float64), torch.tensor([1])
    real = pipe.defended_classifier(seed=0, guidance="latent")
    check = check_gradient(real, x, y, name="latent")
    assert check.passed, check.detail
    masked = check_gradient(MaskedDefense(real, pipe.classifier_logits), x, y, name="masked")
    assert not masked.passed and masked.values["grad_norm"] == 0
    wrong = check_gradient(BPDAClassifier(real, pipe.classifier_logits), x, y, name="bpda")
    assert not wrong.passed and wrong.values["grad_norm"] > 0


# ---------------------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=4)
    out = tmp_path_factory.mktemp("evaluation")
    config = EvaluationConfig(attacks=("apgd", "apgd-guidance", "pgd", "bpda", "surrogate"), seeds=(0, 1),
                              eps_grid=(0.1,), **TINY)
    result = evaluate(pipe, data, config, output_dir=out, pipeline_name="dummy", command="test")
    return result, out, data


def test_evaluate_reports_every_defense_attack_and_setting(evaluated):
    result, out, data = evaluated
    report = json.loads((out / "results.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert set(report["results"]) == set(DEFENSES)
    for defense, by_attack in report["results"].items():
        # The guidance-target attack needs latent guidance; every defense has the per-image worst case over attacks.
        guided = {"apgd-guidance"} if defense in ("latent", "latent+robust-classifier") else set()
        assert set(by_attack) == {"clean", "apgd", "pgd", "bpda", "surrogate", "worst-case"} | guided
        for stat in by_attack.values():
            assert set(stat) == {"all", "majority", "single"}
    settings = report["settings"]
    assert settings["threat_model"] == {"norm": "Linf", "eps": 0.3, "eps_grid": [0.1, 0.3]}
    assert settings["attack"]["steps"] == 2 and settings["attack"]["pgd_step_size"] == pytest.approx(2.5 * 0.3 / 2)
    assert settings["attack"]["gradient_evaluations_per_image"] == 2 * (1 + 3)  # 2 steps x (1 + 3 targeted) runs
    assert settings["attack"]["loss"] == "margin"
    assert "clean and attacked" in settings["robust_rule"]
    assert settings["seeds"] == [0, 1] and settings["rescore_runs"] == 3
    assert settings["surrogate"]["num_inference_steps"] == {"none": 1, "pixel": 1, "latent": 1,
                                                            "latent+robust-classifier": 1}
    assert report["defenses"]["latent"]["first_timestep"] == dummy_pipeline().resolve_settings().first_timestep
    run = report["run"]
    assert run["versions"]["diffusers_agdm"] and run["versions"]["torch"] and run["wall_time_s"] > 0
    assert run["command"] == "test" and report["pipeline"] == "dummy"
    # The undefended classifier is right on every clean image (the labels are its own predictions).
    assert report["results"]["undefended"]["clean"]["all"]["mean"] == 1.0


def test_robust_accuracy_counts_only_clean_correct_images_and_std_is_over_seeds(evaluated):
    result, _, data = evaluated
    report = result.report
    k = report["settings"]["rescore_runs"]
    rules = {"all": lambda r: r["correct_runs"] == k, "majority": lambda r: 2 * r["correct_runs"] > k,
             "single": lambda r: r["run0_correct"]}
    for defense in DEFENSES:
        for attack in ("clean", "apgd", "pgd"):
            stat = report["results"][defense][attack]
            per_seed = {}
            for seed in (0, 1):
                rows = {(r["attack"], r["index"]): r for r in report["per_image"]
                        if (r["defense"], r["seed"]) == (defense, seed)}
                assert sorted(i for a, i in rows if a == attack) == list(range(len(data)))
                for kind, ok in rules.items():
                    # Robust = right on the attacked image AND on the clean one, under the same score.
                    hits = [ok(rows[(attack, i)]) and ok(rows[("clean", i)]) for i in range(len(data))]
                    per_seed[(seed, kind)] = sum(hits) / len(hits)
                    assert stat[kind]["per_seed"][str(seed)] == per_seed[(seed, kind)]
                assert per_seed[(seed, "all")] <= per_seed[(seed, "majority")]
                assert per_seed[(seed, "all")] <= per_seed[(seed, "single")]
            values = [per_seed[(0, "all")], per_seed[(1, "all")]]
            assert stat["all"]["mean"] == pytest.approx(sum(values) / 2)
            assert stat["all"]["std"] == pytest.approx(torch.tensor(values).std().item())
            low, high = stat["all"]["ci95"]
            assert 0 <= low <= stat["all"]["mean"] <= high <= 1
    # The eps curve starts at clean accuracy and passes through the nominal-eps result of the first attack.
    for defense, points in report["eps_curve"].items():
        assert [p["eps"] for p in points] == [0.0, 0.1, 0.3]
        assert points[0]["all"] == report["results"][defense]["clean"]["all"]
        assert points[-1]["all"] == report["results"][defense]["apgd"]["all"]


def test_an_image_wrong_when_clean_is_never_counted_robust():
    """Records where the defense is wrong on a clean image but right on its adversarial one: not robust."""
    from diffusers_agdm.evaluation import Aggregate, EvaluationPlan, Records

    config = EvaluationConfig(defenses=("none",), rescore_runs=3, **{k: v for k, v in TINY.items()
                                                                     if k not in ("rescore_runs",)})
    config.validate()
    plan = EvaluationPlan(config, 2, ["none"])
    clean, attacked = plan.job("none", "clean", 0), plan.job("none", "apgd", 0)
    outputs = [{"job": clean, "start": 0, "correct_runs": [0, 3], "run0_correct": [False, True],
                "predictions": [1, 0], "seconds": 0.0},
               {"job": attacked, "start": 0, "correct_runs": [3, 3], "run0_correct": [True, True],
                "predictions": [0, 0], "seconds": 0.0}]
    aggregate = Aggregate(plan, Records(outputs, 3), [0, 0])
    for kind in ("all", "majority", "single"):
        assert aggregate.accuracy(clean, kind) == 0.5
        assert aggregate.accuracy(attacked, kind) == 0.5  # image 0 is right attacked, but wrong clean


def test_markdown_png_and_examples_are_written_and_consistent(evaluated):
    result, out, data = evaluated
    markdown = (out / "results.md").read_text()
    assert "| latent guidance (AGDM) |" in markdown and "APGD-EOT (exact gradient)" in markdown
    assert "robust in one defense run" in markdown and "n/a" in markdown  # apgd-guidance on unguided defenses
    assert "## Sanity checks" in markdown and "gradient is exact [latent]" in markdown
    for name in ("robust_accuracy_vs_eps.png", "examples_grid.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    examples = result.examples
    assert examples["attack"] == "apgd" and set(examples["defenses"]) == set(DEFENSES)
    torch.testing.assert_close(examples["images"], data.images[:2])
    rows = {(r["defense"], r["index"]): r for r in result.report["per_image"]
            if r["attack"] == "apgd" and r["seed"] == 0}
    for defense, ex in examples["defenses"].items():
        assert (ex["adversarial"] - examples["images"]).abs().max() <= 0.3 + 1e-6
        # The purified image shown is the one scoring run 0 classified.
        assert ex["purified_predictions"].tolist() == [rows[(defense, i)]["prediction_run0"] for i in range(2)]
    torch.testing.assert_close(examples["defenses"]["undefended"]["purified"],
                               examples["defenses"]["undefended"]["adversarial"])


def test_sanity_checks_are_in_every_report(evaluated):
    result, _, _ = evaluated
    names = [c["name"] for c in result.report["sanity_checks"]]
    # The undefended collapse is checked on every seed.
    assert names[:2] == ["undefended falls under attack [seed 0]", "undefended falls under attack [seed 1]"]
    for defense in ("none", "pixel", "latent"):
        for stem in ("huge eps reaches chance", "attack converged: doubling the steps",
                     "attack converged: doubling the EOT draws", "gradient is exact"):
            assert f"{stem} [{defense}]" in names
    assert all(c["status"] in ("PASSED", "FAILED") for c in result.report["sanity_checks"])
    huge = [job for job in result.report["run"]["seconds_per_job"]["latent"] if "eps=1 " in job]
    assert huge and all("no-random-start" in job for job in huge)  # the start alone cannot pass the check


def test_same_seed_same_numbers():
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=2, seed=3)
    config = EvaluationConfig(defenses=("latent",), **{**TINY, "sanity_images": 0, "gradient_check": False})
    first = evaluate(pipe, data, config).report
    second = evaluate(pipe, data, config).report
    assert first["per_image"] == second["per_image"] and first["results"] == second["results"]


def test_a_broken_attack_fails_loudly_after_writing_the_report(tmp_path, capsys):
    """A PGD that cannot move (step 1e-9, no random start) leaves the undefended classifier intact: the
    evaluation must fail, say so, and still write what it measured."""
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=2)
    config = EvaluationConfig(defenses=("undefended",), attacks=("pgd",), step_size=1e-9, random_start=False,
                              **{**TINY, "allow_failed_sanity": False})
    with pytest.raises(SanityCheckError, match="undefended falls under attack") as error:
        evaluate(pipe, data, config, output_dir=tmp_path)
    assert not error.value.result.passed
    assert "SANITY CHECK FAILED" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["sanity_passed"] is False
    assert "SANITY CHECK FAILED" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"eps": -0.1}, "eps"),
    ({"eps": 0.0}, "eps"),
    ({"norm": "L1"}, "norm"),
    ({"attacks": ("pgd", "cw")}, "Unknown attacks"),
    ({"attacks": ()}, "No attack"),
    ({"defenses": ("latent", "jpeg")}, "Unknown defenses"),
    ({"rescore_runs": 0}, "rescore_runs"),
    ({"seeds": (0, 0)}, "seeds"),
    ({"convergence_checks": ("steps", "loss")}, "convergence checks"),
    ({"loss": "hinge"}, "loss"),
    ({"targeted_restarts": CLASSES}, "targeted_restarts"),
    ({"attacks": ("apgd-guidance",), "defenses": ("none",)}, "apgd-guidance"),
    ({"eps_grid": (-0.2,)}, "eps"),
    ({"pixel_guidance_scale": -1.0}, "guidance_scale"),
    ({"attacks": ("autoattack-standard",), "num_classes": 3}, "at least 4 classes"),
])
def test_bad_settings_raise_clear_errors(change, message):
    change = dict(change)
    num_classes = change.pop("num_classes", CLASSES)
    pipe = dummy_pipeline()
    if num_classes != CLASSES:
        from dummies import dummy_classifier, dummy_guidance

        pipe.register_modules(classifier=dummy_classifier(num_classes), guidance=dummy_guidance(num_classes))
    data = labelled_data(pipe, n=2)
    with pytest.raises(ValueError, match=message):
        evaluate(pipe, data, EvaluationConfig(**{**TINY, **change}))


def test_bad_data_raises_clear_errors():
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=2)
    with pytest.raises(ValueError, match="no images"):
        evaluate(pipe, data.subset(0, 0), EvaluationConfig(**TINY))
    with pytest.raises(ValueError, match="labels in"):
        evaluate(pipe, LabelledImages(data.images, torch.tensor([0, CLASSES]), [], "bad"), EvaluationConfig(**TINY))
    with pytest.raises(ValueError, match="8x8"):
        evaluate(pipe, LabelledImages(torch.rand(2, 1, 9, 9), data.labels, [], "big"), EvaluationConfig(**TINY))
    with pytest.raises(ValueError, match="no classifier"):
        evaluate(dummy_pipeline(with_classifier=False), data, EvaluationConfig(**TINY))
    with pytest.raises(ValueError, match="Unknown evaluation settings"):
        evaluate(pipe, data, EvaluationConfig(**TINY), epsilon=0.3)


def test_units_are_shared_once_each_and_attacks_spread_over_processes():
    from diffusers_agdm.evaluation import Job, Unit, share_units, unit_cost

    jobs = [Job(d, a, 64, 0) if a == "clean" else Job(d, a, 64, 0, eps=0.3, steps=10, eot_samples=1, restarts=1)
            for d in ("undefended", "none", "pixel", "latent") for a in ("clean", "apgd")]
    units = [Unit(job, start, start + 32) for start in (0, 32) for job in jobs] + [Unit(None, 0, 1, "latent")]
    shares = [share_units(units, p, 2) for p in range(2)]
    assert sorted(map(units.index, shares[0] + shares[1])) == list(range(len(units)))
    for share in shares:
        assert share == [u for u in units if u in share]  # kept in run order
        attacked = [u for u in share if u.job is not None and u.job.attack == "apgd" and u.job.defense != "undefended"]
        assert len(attacked) == 3
    loads = [sum(map(unit_cost, share)) for share in shares]
    assert max(loads) <= 1.1 * min(loads)


# ---------------------------------------------------------------------------------------------------- resuming
def test_a_resumed_evaluation_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    from diffusers_agdm.evaluation.execution import UnitRunner

    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=4, seed=5)
    config = EvaluationConfig(defenses=("none", "latent"), **{**TINY, "gradient_check": False})
    uninterrupted = evaluate(pipe, data, config, output_dir=tmp_path / "one-go").report

    real_run, calls = UnitRunner.run, []

    def dies_after_five(self, unit, *args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        calls.append(unit)
        return real_run(self, unit, *args, **kwargs)

    monkeypatch.setattr(UnitRunner, "run", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        evaluate(pipe, data, config, output_dir=tmp_path / "resumed")
    monkeypatch.setattr(UnitRunner, "run", lambda self, unit, *a, **k: (calls.append(unit), real_run(
        self, unit, *a, **k))[1])
    resumed = evaluate(pipe, data, config, output_dir=tmp_path / "resumed").report
    assert len(calls) == len(set(calls)) > 5  # no finished unit ran twice
    assert resumed["results"] == uninterrupted["results"] and resumed["per_image"] == uninterrupted["per_image"]
    # Another setting never reuses those units.
    other = evaluate(pipe, data, config.replace(eps=0.2), output_dir=tmp_path / "resumed").report
    assert other["run"]["fingerprint"] != resumed["run"]["fingerprint"]


def test_the_output_folder_is_checked_before_any_work(tmp_path, monkeypatch):
    from diffusers_agdm.evaluation.execution import UnitRunner

    monkeypatch.setattr(UnitRunner, "run", lambda *a, **k: pytest.fail("work started"))
    pipe = dummy_pipeline()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        evaluate(pipe, labelled_data(pipe, n=2), EvaluationConfig(**TINY), output_dir=blocker)


# ---------------------------------------------------------------------------------------------------- the baseline
def test_the_robust_classifier_is_the_guidance_network_at_t0_as_y_hat_is_computed():
    from diffusers_agdm.evaluation import RobustClassifier

    pipe = dummy_pipeline()
    x = dummy_images(3)
    specs = {s.name: s for s in defense_specs(pipe, DEFENSES, guidance_scale=7.0)}
    robust = specs["robust-classifier"].build(pipe, seed=0)
    assert isinstance(robust, RobustClassifier) and specs["robust-classifier"].settings is None
    with torch.no_grad():
        # The pipeline's own y_hat call: the input in [-1, 1], timestep 0.
        y_hat_logits = pipe.guidance(x * 2 - 1, torch.zeros(1, dtype=torch.long)).logits
        torch.testing.assert_close(robust(x), y_hat_logits)
        assert torch.equal(robust(x), robust(x))  # deterministic
        # Latent purification (the latent defense's settings), then the same robust network.
        both = specs["latent+robust-classifier"]
        assert both.settings == specs["latent"].settings
        model = both.build(pipe, seed=4)
        purified = specs["latent"].build(pipe, seed=4).purify(x)
        torch.testing.assert_close(model(x), pipe.guidance(purified * 2 - 1, torch.zeros(1, dtype=torch.long)).logits)
    described = both.describe(pipe)
    assert described["classifier"] == "guidance network at t = 0" and described["guidance_scale"] == 7.0
    # The pixel scale is stored under the name the API takes it by.
    pixel = {s.name: s for s in defense_specs(pipe, ("pixel",), pixel_guidance_scale=3.0)}["pixel"].describe(pipe)
    assert pixel["pixel_guidance_scale"] == 3.0 and "guidance_scale" not in pixel
    with pytest.raises(ValueError, match="guidance network"):
        RobustClassifier(dummy_pipeline().__class__(unet=pipe.unet, scheduler=pipe.scheduler, guidance=None,
                                                    classifier=pipe.classifier))


# ---------------------------------------------------------------------------------------------------- worst case
def _records(outputs, config, defenses=("none",), num_images=3):
    from diffusers_agdm.evaluation import Aggregate, EvaluationPlan, Records

    config.validate()
    plan = EvaluationPlan(config, num_images, list(defenses))
    return plan, Aggregate(plan, Records(outputs, config.rescore_runs), [0] * num_images)


def test_the_worst_case_row_chooses_on_selection_runs_and_reads_the_scoring_runs():
    """Per image the candidate misclassified on the most selection runs (ties: the larger mean margin loss) is
    chosen and its K-run record read: image 2 counts as robust because the example chosen on the selection runs
    survives the scoring runs, although the other attack's example fails one scoring run (a minimum over scoring
    runs would count it broken: biased low)."""
    config = EvaluationConfig(defenses=("none",), attacks=("apgd", "pgd"), **{**TINY, "rescore_runs": 3})
    from diffusers_agdm.evaluation import EvaluationPlan

    plan = EvaluationPlan(config, 3, ["none"])
    clean, apgd_job, pgd_job = (plan.job("none", a, 0) for a in ("clean", "apgd", "pgd"))

    def out(job, runs, wrong=None, loss=None):
        row = {"job": job, "start": 0, "correct_runs": runs, "run0_correct": [r > 0 for r in runs],
               "predictions": [0] * 3, "seconds": 0.0}
        return row | ({"selection_wrong": wrong, "selection_loss": loss} if wrong else {})

    outputs = [out(clean, [3, 3, 3]), out(apgd_job, [3, 0, 3], [0, 5, 1], [-2.0, 1.0, -1.0]),
               out(pgd_job, [0, 3, 2], [0, 2, 0], [-1.0, 0.5, -3.0])]
    plan, aggregate = _records(outputs, config)
    jobs = aggregate.attack_jobs("none", 0)
    assert [r.attack for r in aggregate.records.worst_rows(jobs, 3)] == ["pgd", "apgd", "apgd"]
    assert aggregate.robust(jobs, "all") == [False, False, True]
    assert aggregate.robust(jobs, "single") == [False, False, True]
    results = aggregate.results()["none"]
    assert results["worst-case"]["all"]["mean"] == pytest.approx(1 / 3)
    assert results["apgd"]["all"]["mean"] == pytest.approx(2 / 3)
    assert results["pgd"]["all"]["mean"] == pytest.approx(1 / 3)
    rows = [r for r in aggregate.per_image() if r["attack"] == "worst-case"]
    assert [r["chosen_attack"] for r in rows] == ["pgd", "apgd", "apgd"]


def test_on_a_deterministic_defense_the_worst_case_is_the_per_image_minimum_over_the_rows(tmp_path):
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=8, seed=0)
    config = EvaluationConfig(defenses=("undefended", "robust-classifier"), attacks=("apgd", "pgd"), eps=0.02,
                              **{**TINY, "sanity_images": 0, "gradient_check": False, "selection_runs": 2})
    report = evaluate(pipe, data, config).report
    k, s = config.rescore_runs, config.selection_runs
    mixed = 0
    for defense in ("undefended", "robust-classifier"):
        rows = {(r["attack"], r["index"]): r for r in report["per_image"] if r["defense"] == defense}
        for i in range(len(data)):
            assert rows[("apgd", i)]["correct_runs"] in (0, k) and rows[("apgd", i)]["selection_wrong"] in (0, s)
            for kind, ok in {"all": lambda r: r["correct_runs"] == k, "majority": lambda r: 2 * r["correct_runs"] > k,
                             "single": lambda r: r["run0_correct"]}.items():
                per_row = [ok(rows[(a, i)]) for a in ("apgd", "pgd")]
                mixed += per_row[0] != per_row[1]
                assert ok(rows[("worst-case", i)]) == min(per_row)
        for kind in ("all", "majority", "single"):
            expected = sum(min(rows[("clean", i)]["correct_runs"] == k, rows[("apgd", i)]["correct_runs"] == k,
                               rows[("pgd", i)]["correct_runs"] == k) for i in range(len(data))) / len(data)
            if kind == "all":
                assert report["results"][defense]["worst-case"]["all"]["mean"] == pytest.approx(expected)
            assert report["results"][defense]["worst-case"][kind]["mean"] <= min(
                report["results"][defense][a][kind]["mean"] for a in ("apgd", "pgd"))
    assert mixed > 0  # some image survives one attack and not the other: the minimum is not trivial


# ---------------------------------------------------------------------------------------------------- convergence
class Ripple(nn.Module):
    """A linear classifier plus a random high-frequency ripple drawn afresh per call: tiny in the logits (amplitude
    a / w), large in the gradient (amplitude a). A one-draw gradient points partly nowhere, so a short EOT-1 attack
    has not converged; averaging draws removes the ripple."""

    def __init__(self, dim=64, classes=2, a=5.0, w=1000.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)),
                                   requires_grad=False)
        self.a, self.w, self.generator = a, w, torch.Generator().manual_seed(0)

    def reseed(self, seed):
        self.generator.manual_seed(seed)

    def forward(self, x):
        flat = x.flatten(1)
        r = torch.randn(flat.shape[0], *self.weight.shape, generator=self.generator, dtype=flat.dtype)
        return flat @ self.weight.T + torch.sin(self.w * torch.einsum("bd,bcd->bc", flat, r)) * self.a / self.w


def test_the_paired_convergence_check_fails_apgd_10_eot_1_and_passes_a_converged_budget():
    """Doubling each axis (steps, EOT, runs) of APGD-10 EOT 1 breaks images it left robust, and the paired test
    says so; APGD-100 EOT 16 is converged on this defense, and doubling any axis changes no image's verdict."""
    from diffusers_agdm.attacks import apgd, rescore

    model = Ripple()
    x = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = (x.flatten(1) @ model.weight.T).argmax(-1)

    def robust(steps, eot, restarts):
        model.reseed(5)
        adversarial = apgd(model, x, y, eps=0.05, steps=steps, eot_samples=eot, restarts=restarts,
                           generator=torch.Generator().manual_seed(3))
        scored = rescore(model, adversarial, y, 5, seed=7)
        return {kind: scored.counts_correct(kind).tolist() for kind in ("all", "majority", "single")}

    for (steps, eot), converged in (((10, 1), False), ((100, 16), True)):
        weak = robust(steps, eot, 1)
        for axis, budget in (("the steps", (2 * steps, eot, 1)), ("the EOT draws", (steps, 2 * eot, 1)),
                             ("the runs", (steps, eot, 2))):
            check = check_converged_paired("ripple", axis, ("reported", weak), ("doubled", robust(*budget)))
            assert check.passed == converged, check.detail
            if not converged:
                assert "not converged" in check.detail and check.values["scores"]["all"]["p_value"] < 0.05


def test_the_paired_test_and_its_false_alarm_rate():
    from diffusers_agdm.evaluation.sanity import false_alarm_rate, sign_test_p_value

    assert sign_test_p_value(5, 0) == 1 / 32 and sign_test_p_value(0, 0) == 1.0
    assert sign_test_p_value(6, 1) == pytest.approx(8 / 128)
    # Without a real change the rule fires at most ~alpha when few images change; the tolerance adds to it.
    assert false_alarm_rate(4, 32, 0.05, 0.15) == 0.0 and false_alarm_rate(5, 32, 0.05, 0.15) == 1 / 32
    assert false_alarm_rate(10, 32, 0.05, 0.15) == pytest.approx(0.0547, abs=1e-3)
    # Eight images robust -> broken and none back: a drop the old 2-point unpaired rule could not tell from noise
    # on a row that also repaired others; here the paired test rejects.
    weak = ("reported", {"all": [True] * 8 + [False] * 24})
    assert not check_converged_paired("d", "the steps", weak, ("doubled", {"all": [False] * 32})).passed
    swapped = ("doubled", {"all": [False] * 4 + [True] * 4 + [True] * 4 + [False] * 20})
    assert check_converged_paired("d", "the steps", weak, swapped).passed  # 4 each way: no evidence of a drop
    spent = check_converged_paired("d", "the steps", weak, ("doubled", weak[1]), spent=(200.0, 200.0))
    assert not spent.passed and "not spent" in spent.detail


def test_autoattack_doubled_jobs_really_double_and_an_ignored_budget_fails_the_check(monkeypatch):
    """With AutoAttack as the only attack, the doubled jobs must run twice the iterations and EOT draws. An
    AutoAttack that ignored the job's budget (as the evaluation once did: it read the config's) returns the same
    images, which a check on accuracies alone would pass: the spent gradient evaluations make it fail."""
    import dataclasses

    from diffusers_agdm.attacks import autoattack
    from diffusers_agdm.evaluation import ATTACK_SPECS

    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=2)
    config = EvaluationConfig(defenses=("none",), attacks=("autoattack-rand",), autoattack_steps=2,
                              autoattack_eot_iter=1, **{**TINY, "gradient_check": False})
    report = evaluate(pipe, data, config).report
    checks = {c["name"]: c for c in report["sanity_checks"]}
    for axis, ratio in (("the steps", 5 / 3), ("the EOT draws", 2.0)):  # 2 runs x (1 + steps) x EOT evaluations
        check = checks[f"attack converged: doubling {axis} [none, autoattack-rand]"]
        weak, strong = check["values"]["gradient_evaluations_per_image"].values()
        assert strong == pytest.approx(ratio * weak) and "not spent" not in check["detail"]
    assert "attack converged: doubling the runs [none, autoattack-rand]" not in checks  # it has no runs to double

    def ignores_the_job(model, images, labels, job, *, config, num_classes, generator, callback, **_):
        return autoattack(model, images, labels, eps=job.eps, norm=job.norm, version="rand", n_classes=num_classes,
                          seed=generator.initial_seed() % 2**31, steps=config.autoattack_steps,
                          eot_iter=config.autoattack_eot_iter, callback=callback)

    monkeypatch.setitem(ATTACK_SPECS, "autoattack-rand",
                        dataclasses.replace(ATTACK_SPECS["autoattack-rand"], runner=ignores_the_job))
    report = evaluate(pipe, data, config).report
    checks = {c["name"]: c for c in report["sanity_checks"]}
    for axis in ("the steps", "the EOT draws"):
        check = checks[f"attack converged: doubling {axis} [none, autoattack-rand]"]
        assert check["status"] == "FAILED" and "doubled budget was not spent" in check["detail"]


def test_a_doubled_number_of_runs_really_doubles_even_past_the_classes():
    from diffusers_agdm.evaluation import EvaluationPlan

    config = EvaluationConfig(defenses=("none",), restarts=1, targeted_restarts=3, long_runs_on_purifiers=False,
                              **TINY)
    config.validate()
    plan = EvaluationPlan(config, 4, ["none"], num_classes=CLASSES)  # at most 3 targeted runs with 4 classes
    job = plan.job("none", "apgd", 0)
    doubled = plan.doubled(job, "restarts")
    assert (doubled.restarts + doubled.targeted_restarts) == 2 * (job.restarts + job.targeted_restarts)
    assert doubled.targeted_restarts == CLASSES - 1 and doubled.restarts == 5
    assert plan.doubled(job, "steps").steps == 2 * job.steps and plan.doubled(job, "eot").eot_samples == 2
    with pytest.raises(ValueError, match="no 'restarts'"):
        plan.doubled(plan.job("none", "pgd", 0), "restarts")


def test_apgd_spends_the_targeted_runs_as_a_longer_run_on_purifiers_only():
    from diffusers_agdm.evaluation import EvaluationPlan

    config = EvaluationConfig(defenses=("undefended", "robust-classifier", "none", "latent"), steps=25, restarts=1,
                              targeted_restarts=3, eot_samples=2)
    config.validate()
    plan = EvaluationPlan(config, 4, ["none", "latent"], num_classes=10)
    shape = {d: (lambda j: (j.steps, j.restarts, j.targeted_restarts))(plan.job(d, "apgd", 0))
             for d in config.defenses}
    assert shape == {"undefended": (25, 1, 3), "robust-classifier": (25, 1, 3), "none": (100, 1, 0),
                     "latent": (100, 1, 0)}
    guided = plan.job("latent", "apgd-guidance", 0)
    assert (guided.steps, guided.restarts, guided.targeted_restarts) == (100, 1, 0)
    iterations = {d: plan.job(d, "apgd", 0).iterations for d in config.defenses}
    assert set(iterations.values()) == {100}  # the same budget on every defense
    doubled = plan.doubled(plan.job("none", "apgd", 0), "restarts")
    assert (doubled.steps, doubled.restarts, doubled.targeted_restarts) == (100, 2, 0)
    # Runs as set, on request; and a budget that does not divide is rounded up, never down.
    as_set = EvaluationPlan(config.replace(long_runs_on_purifiers=False), 4, ["none"], num_classes=10)
    job = as_set.job("none", "apgd", 0)
    assert (job.steps, job.restarts, job.targeted_restarts) == (25, 1, 3)
    odd = EvaluationPlan(config.replace(steps=5, restarts=2, targeted_restarts=3), 4, ["none"], num_classes=10)
    job = odd.job("none", "apgd", 0)
    assert (job.steps, job.restarts, job.targeted_restarts) == (13, 2, 0)


def test_one_k_run_rule_for_numbers_tensors_and_rescored_predictions():
    from diffusers_agdm.attacks import RescoredPredictions, rescore, robust_under

    assert [robust_under("all", r, 5) for r in (4, 5)] == [False, True]
    assert [robust_under("majority", r, 4) for r in (2, 3)] == [False, True]  # a tie is wrong
    assert robust_under("single", 0, 5, True) is True
    runs = torch.tensor([0, 2, 3, 5])
    assert robust_under("majority", runs, 5).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="Unknown score"):
        robust_under("best", 5, 5)
    scored = RescoredPredictions(torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 1]]), torch.tensor([0, 0, 1]))
    assert scored.accuracy("all") == pytest.approx(1 / 3) and scored.accuracy("majority") == pytest.approx(1.0)
    assert scored.accuracy("single") == pytest.approx(2 / 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with_losses = rescore(model, x, y, runs=2, losses=True)
    assert with_losses.losses.shape == (2, 6)
    assert ((with_losses.losses > 0) == ~with_losses.correct).all()  # the margin loss is > 0 exactly when wrong
    assert rescore(model, x, y, runs=2).losses is None


def test_attacks_without_gradient_checkpointing_give_the_same_numbers():
    """`gradient_checkpointing=False` only trades memory for speed: the replayed steps compute what the kept ones
    do, so every attack, selection and score is the same, and the setting is part of the resume fingerprint."""
    pipe = dummy_pipeline()
    data = labelled_data(pipe, n=3)
    config = EvaluationConfig(defenses=("none", "latent"), attacks=("apgd", "apgd-guidance"),
                              **{**TINY, "sanity_images": 0, "gradient_check": False})
    kept = evaluate(pipe, data, config.replace(gradient_checkpointing=False)).report
    replayed = evaluate(pipe, data, config).report
    assert kept["per_image"] == replayed["per_image"]
    from diffusers_agdm.evaluation.store import fingerprint_parts

    unchecked = config.replace(gradient_checkpointing=False)
    parts = [fingerprint_parts(c, pipe, data, {})["settings"] for c in (config, unchecked)]
    assert parts[0] != parts[1]
