import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_agdm.attacks import (
    AttackObjective,
    AttackStats,
    BPDAClassifier,
    apgd,
    attack_loss,
    autoattack,
    autoattack_rand,
    checkpoints,
    eot_gradient,
    guidance_target_logits,
    per_image_loss,
    pgd,
    rescore,
    selection_scores,
    surrogate_defense,
)
from diffusers_agdm.attacks.objective import dual_norm
from diffusers_agdm.evaluation import check_converged_paired
from dummies import CLASSES, dummy_images, dummy_pipeline


def linear_classifier(num_classes=4, size=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, num_classes))
    with torch.no_grad():
        model[1].weight.mul_(8.0)
    return model.requires_grad_(False)


def images_it_gets_right(model, n=16, size=4, seed=0):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return x, model(x).argmax(-1)


class NoisyLinear(nn.Module):
    """A stochastic model with a `reseed`: every call multiplies the input by a fresh random mask."""

    def __init__(self, seed=0):
        super().__init__()
        self.linear = linear_classifier()
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed):
        self.generator.manual_seed(seed)

    def forward(self, x):
        mask = 0.5 + torch.rand(x.shape, generator=self.generator)
        return self.linear(x * mask)


class ScriptedModel(nn.Module):
    """Returns, on its k-th call after `reseed`, the k-th row of a fixed table of predictions."""

    def __init__(self, table):
        super().__init__()
        self.table, self.calls, self.seeds = torch.tensor(table), 0, []

    def reseed(self, seed):
        self.calls = 0
        self.seeds.append(seed)

    def forward(self, x):
        predictions = self.table[self.calls]
        self.calls += 1
        return F.one_hot(predictions, 4).float()


# ---------------------------------------------------------------------------------------------------- PGD
def best_linf_attack(model, x, y, eps):
    """The optimal Linf perturbation inside [0, 1] against a two-class linear model, in closed form."""
    w = model[1].weight
    direction = (w[1] - w[0]).reshape(1, *x.shape[1:]) * (1 - 2 * y.reshape(-1, 1, 1, 1))
    return torch.where(direction > 0, (x + eps).clamp(max=1), (x - eps).clamp(min=0))


@pytest.mark.parametrize("norm, eps", [("Linf", 0.3), ("L2", 2.0)])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_breaks_an_undefended_linear_classifier_inside_the_ball(norm, eps, loss):
    """On a two-class linear model the attack objective is linear, so PGD must find the best perturbation."""
    model = linear_classifier(num_classes=2, seed=1)
    x, y = images_it_gets_right(model)
    assert (model(x).argmax(-1) == y).all() and 0 < y.float().mean() < 1
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(-1) == y).float().mean() == 0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_flips_exactly_the_images_the_optimal_perturbation_flips(loss):
    """Where the ball is too small for some images, PGD breaks precisely the breakable ones: it neither misses an
    optimum nor leaves the ball to win."""
    model = linear_classifier(num_classes=2, seed=0)
    x, y = images_it_gets_right(model)
    breakable = model(best_linf_attack(model, x, y, 0.3)).argmax(-1) != y
    assert 0 < breakable.float().mean() < 1
    x_adv = pgd(model, x, y, eps=0.3, steps=20, loss=loss, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x_adv).argmax(-1) != y, breakable)


def test_pgd_with_too_small_a_budget_cannot_break_it():
    """The same attack fails at a tiny eps: the test above measures the attack, not a model that always fails."""
    model = linear_classifier()
    x, y = images_it_gets_right(model)
    x_adv = pgd(model, x, y, eps=1e-4, steps=5, generator=torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(-1) == y).float().mean() > 0.5


def test_pgd_is_reproducible_with_a_generator_and_zero_eps_is_the_identity():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=4)
    a = pgd(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(pgd(model, x, y, eps=0.0, steps=2), x, rtol=0, atol=0)


def test_attack_losses():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 2])
    torch.testing.assert_close(attack_loss(logits, labels, "ce").float(),
                               F.cross_entropy(logits, labels, reduction="sum"))
    # margin: best wrong logit minus the true one, summed: (1.0 - 2.0) + (3.0 - (-1.0))
    torch.testing.assert_close(attack_loss(logits, labels, "margin").float(), torch.tensor(3.0))
    # DLR: the margin over (largest - third largest logit): (1 - 2) / (2 - 0.5) + (3 - (-1)) / (3 - (-1))
    torch.testing.assert_close(attack_loss(logits, labels, "dlr").float(), torch.tensor(-1 / 1.5 + 1.0))
    with pytest.raises(ValueError, match="3 classes"):
        attack_loss(logits[:, :2], torch.tensor([0, 1]), "dlr")


def test_eot_gradient_is_the_average_of_single_gradients():
    model, x = NoisyLinear(), torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    model.reseed(5)
    averaged = eot_gradient(model, x, y, "ce", eot_samples=3)
    model.reseed(5)
    manual = []
    for _ in range(3):
        probe = x.clone().requires_grad_(True)
        manual.append(torch.autograd.grad(F.cross_entropy(model(probe), y, reduction="sum"), probe)[0])
    torch.testing.assert_close(averaged, torch.stack(manual).mean(0))
    assert not torch.allclose(manual[0], manual[1])  # the samples really differ


def test_one_pgd_step_follows_the_sign_of_the_eot_gradient():
    model, x = NoisyLinear(), torch.full((2, 1, 4, 4), 0.5)
    y = torch.tensor([0, 1])
    model.reseed(7)
    grad = eot_gradient(model, x, y, "ce", eot_samples=4)
    model.reseed(7)
    x_adv = pgd(model, x, y, eps=0.1, steps=1, step_size=0.05, eot_samples=4, random_start=False, loss="ce")
    torch.testing.assert_close(x_adv, x + 0.05 * grad.sign())


def test_eot_gradient_through_the_whole_defense_with_checkpointing_is_exact():
    """EOT on `defended_classifier` (checkpointed) equals plain autograd through `purify` with the same noise."""
    pipe = dummy_pipeline("ddpm")
    x, y = dummy_images(2), torch.tensor([0, 1])
    defended = pipe.defended_classifier(seed=11, gradient_checkpointing=True, guidance="latent")
    grad = eot_gradient(defended, x, y, "ce", eot_samples=2)
    generator, manual = torch.Generator().manual_seed(11), []
    for _ in range(2):
        probe = x.clone().requires_grad_(True)
        logits = pipe.classifier_logits(pipe.purify(probe, guidance="latent", generator=generator))
        manual.append(torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), probe)[0])
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, torch.stack(manual).mean(0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": -0.1}, "eps"), ({"eps": 0.3, "norm": "L1"}, "norm"), ({"eps": 0.3, "loss": "hinge"}, "loss"),
    ({"eps": 0.3, "steps": 0}, "steps"), ({"eps": 0.3, "eot_samples": 0}, "eot_samples"),
    ({"eps": 0.3, "step_size": -1.0}, "step_size"),
])
def test_pgd_rejects_bad_budgets(kwargs, message):
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=2)
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, **kwargs)


# ---------------------------------------------------------------------------------------------------- surrogates
def test_bpda_forward_is_the_defense_and_its_gradient_the_classifiers_at_the_purified_point():
    pipe = dummy_pipeline()
    x, y = dummy_images(2), torch.tensor([0, 1])
    bpda = BPDAClassifier(pipe.defended_classifier(seed=3, guidance="latent"), pipe.classifier_logits)
    bpda.reseed(4)
    probe = x.clone().requires_grad_(True)
    logits = bpda(probe)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), probe)

    purified = pipe.purify(x, guidance="latent", generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    expected_logits = pipe.classifier_logits(purified)
    (expected,) = torch.autograd.grad(F.cross_entropy(expected_logits, y, reduction="sum"), purified)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(grad, expected)
    assert next(bpda.parameters(), None) is not None  # torchattacks can find its device


def test_surrogate_runs_fewer_reverse_steps_than_the_defense():
    pipe = dummy_pipeline(num_inference_steps=3)
    calls = []
    handle = pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    x = dummy_images(1)
    try:
        with torch.no_grad():  # (with gradients, checkpointing may rerun steps)
            pipe.defended_classifier(seed=0)(x)
            real = len(calls)
            calls.clear()
            surrogate = surrogate_defense(pipe, num_inference_steps=1, seed=0, guidance="latent")
            surrogate(x)
    finally:
        handle.remove()
    assert (real, len(calls)) == (3, 1)
    assert surrogate.purify_kwargs["guidance"] == "latent"


# ---------------------------------------------------------------------------------------------------- scoring
def test_rescore_counts_all_runs_and_majorities():
    labels = torch.tensor([0, 0, 0, 0])
    # image:        0  1  2  3
    table = [[0, 0, 0, 1],
             [0, 0, 1, 1],
             [0, 1, 1, 1]]
    model = ScriptedModel(table)
    scored = rescore(model, torch.zeros(4, 1, 2, 2), labels, runs=3, seed=9)
    assert model.seeds == [9]
    assert scored.correct_runs.tolist() == [3, 2, 1, 0]
    assert scored.all_correct.tolist() == [True, False, False, False]
    assert scored.majority_correct.tolist() == [True, True, False, False]
    assert (scored.accuracy("all"), scored.accuracy("majority")) == (0.25, 0.5)
    # An even K: a tie is not a majority.
    tie = rescore(ScriptedModel(table[:2]), torch.zeros(4, 1, 2, 2), labels, runs=2)
    assert tie.majority_correct.tolist() == [True, True, False, False]
    assert tie.correct_runs.tolist() == [2, 2, 1, 0]
    with pytest.raises(ValueError, match="runs"):
        rescore(model, torch.zeros(4, 1, 2, 2), labels, runs=0)


def test_rescore_draws_fresh_noise_for_every_run():
    pipe = dummy_pipeline()
    defended = pipe.defended_classifier(seed=0)
    x = dummy_images(8)
    defended.reseed(1)
    first, second = defended.purify(x), defended.purify(x)
    assert not torch.allclose(first, second)


# ---------------------------------------------------------------------------------------------------- AutoAttack
def test_autoattack_rand_breaks_a_linear_classifier_and_leaves_the_global_rng_alone():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=8)
    state = torch.get_rng_state()
    x_adv = autoattack(model, x, y, eps=0.3, version="rand", n_classes=4, seed=0, steps=10, eot_iter=1)
    assert torch.equal(state, torch.get_rng_state())
    assert (model(x_adv).argmax(-1) == y).float().mean() == 0
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6


@pytest.mark.parametrize("version", ["rand", "standard"])
def test_autoattack_runs_on_the_defended_module(version):
    pipe = dummy_pipeline()
    defended = pipe.defended_classifier(seed=0, guidance="latent")
    x, y = dummy_images(2), torch.tensor([0, 1])
    x_adv = autoattack(defended, x, y, eps=0.1, norm="Linf", version=version, n_classes=CLASSES, seed=0, steps=2,
                       eot_iter=1, square_queries=3)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"version": "plus"}, "version"), ({"version": "standard", "n_classes": 3}, "at least 4 classes"),
    ({"eps": -1.0}, "eps"), ({"norm": "L1"}, "norm"), ({"steps": 0}, "steps"),
])
def test_autoattack_rejects_bad_settings(kwargs, message):
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=2)
    with pytest.raises(ValueError, match=message):
        autoattack(model, x, y, **{"eps": 0.3, "n_classes": 4, **kwargs})


def test_a_model_that_cuts_the_graph_is_reported_not_silently_skipped():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=2)
    with pytest.raises(RuntimeError, match="BPDAClassifier"):
        pgd(lambda images: model(images.detach()), x, y, eps=0.1, steps=1)


# ---------------------------------------------------------------------------------------------------- losses
def test_cross_entropy_gradient_never_vanishes_on_a_confident_prediction():
    """float32 F.cross_entropy rounds p_y - 1 to 0 once the margin passes ~17 (the embedded default's median
    margin is ~26); the stable form keeps the exact, well-directed gradient."""
    logits = torch.tensor([[40.0, 0.0, -3.0, 1.0]], requires_grad=True)
    label = torch.tensor([0])
    textbook = torch.autograd.grad(F.cross_entropy(logits, label), logits)[0]
    assert textbook[0, 0] == 0  # the failure this guards against: the true logit's pull, p_y - 1, rounds to 0
    ours = torch.autograd.grad(per_image_loss(logits, label, "ce").sum(), logits)[0]
    # The exact gradient, written without the cancellation: softmax for the wrong classes, minus their sum for the
    # true one (even float64 autograd of the textbook form gives 0 there at this margin).
    exact = torch.softmax(logits.detach().double(), -1)
    exact[0, 0] = -exact[0, 1:].sum()
    assert ours[0, 0] < 0 and (ours[0, 1:] > 0).all()
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=0)


def saturated_linear(num_classes=4):
    """A linear model with logit margins of 9 to 98: the float32 textbook CE loses the true logit's pull."""
    model = linear_classifier(num_classes)
    with torch.no_grad():
        model[1].weight.mul_(15.0)
        model[1].bias.mul_(15.0)
    return model


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_l2_attacks_do_not_stall_on_saturated_logits(attack):
    model = saturated_linear()
    x, y = images_it_gets_right(model, n=8)
    logits = model(x).detach().requires_grad_(True)
    textbook = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)[0]
    assert (textbook.gather(1, y[:, None]) == 0).sum() >= 4
    kwargs = {"step_size": 0.5} if attack == "pgd" else {}
    x_adv = (pgd if attack == "pgd" else apgd)(model, x, y, eps=3.0, norm="L2", steps=20, loss="ce",
                                                generator=torch.Generator().manual_seed(0), **kwargs)
    # Gradients this small made the old L2 step (grad / norm.clamp_min(1e-12)) ~0: PGD never left its start.
    probe = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(per_image_loss(model(probe), y, "ce").sum(), probe)[0]
    assert grad.flatten(1).norm(dim=1).min() < 1e-12
    assert (model(x_adv).argmax(-1) == y).float().mean() == 0


# ---------------------------------------------------------------------------------------------------- APGD
def test_apgd_checkpoints_follow_the_papers_schedule():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("norm, eps", [("Linf", 0.3), ("L2", 2.0)])
def test_apgd_flips_exactly_what_can_be_flipped_and_stays_in_the_ball(norm, eps):
    model = linear_classifier(num_classes=2, seed=0)
    x, y = images_it_gets_right(model)
    x_adv = apgd(model, x, y, eps=eps, norm=norm, steps=30, restarts=2, generator=torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= eps * (1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
    if norm == "Linf":
        breakable = model(best_linf_attack(model, x, y, eps)).argmax(-1) != y
        assert torch.equal(model(x_adv).argmax(-1) != y, breakable)


def test_apgd_returns_the_worst_point_it_met_and_records_a_monotone_history():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=8)
    x_adv, history = apgd(model, x, y, eps=0.05, steps=10, restarts=2, loss="margin",
                          generator=torch.Generator().manual_seed(1), record_at=(1, 5, 10, 20))
    assert sorted(history) == [1, 5, 10, 20]
    losses = [per_image_loss(model(history[n]), y, "margin") for n in (1, 5, 10, 20)]
    for earlier, later in zip(losses, losses[1:]):
        assert (later >= earlier - 1e-6).all()  # the worst point so far never gets better for the attacker
    torch.testing.assert_close(history[20], x_adv, rtol=0, atol=0)
    # No point is left at the clean input, even where nothing could be flipped.
    assert ((x_adv - x).flatten(1).abs().max(1).values > 0).all()


def test_apgd_targeted_restarts_aim_at_the_next_likely_classes():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=8)
    x_adv, history = apgd(model, x, y, eps=1.0, steps=5, restarts=1, targeted_restarts=2, record_at=(5, 15),
                          generator=torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(-1) != y).all()
    # The targeted runs count in the budget and in the record (3 runs of 5 iterations).
    torch.testing.assert_close(history[15], x_adv, rtol=0, atol=0)
    with pytest.raises(ValueError, match="below the number of classes"):
        apgd(model, x, y, eps=0.3, steps=2, targeted_restarts=4)
    with pytest.raises(ValueError, match="record_at"):
        apgd(model, x, y, eps=0.3, steps=2, record_at=(3,))


def test_apgd_is_reproducible_and_eot_draws_can_share_a_batch():
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    runs = [apgd(NoisyLinear(seed=0), x, y, eps=0.1, steps=4, eot_samples=2, eot_batch=batch,
                 generator=torch.Generator().manual_seed(2)) for batch in (1, 1, 2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert runs[2].shape == x.shape and (runs[2] - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="eot_batch"):
        apgd(NoisyLinear(), x, y, eps=0.1, steps=1, eot_batch=0)


# ---------------------------------------------------------------------------------------------------- guidance target
def test_guidance_target_logits_are_what_latent_guidance_takes_its_class_from():
    pipe = dummy_pipeline()
    defended = pipe.defended_classifier(seed=0, guidance="latent")
    x = dummy_images(3)
    logits = guidance_target_logits(defended, x)
    reference = x * 2 - 1
    expected = pipe.guidance(reference, torch.zeros(1, dtype=torch.long)).logits
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="guidance network"):
        guidance_target_logits(linear_classifier(), x)


def test_the_guidance_term_adds_the_guidance_networks_margin_gradient():
    pipe = dummy_pipeline()
    x, y = dummy_images(2), torch.tensor([0, 1])
    plain = AttackObjective(pipe.defended_classifier(seed=0, guidance="latent"), "margin")(x, y)
    guided = AttackObjective(pipe.defended_classifier(seed=0, guidance="latent"), "margin", guidance_weight=2.0,
                             normalise_guidance=False)(x, y)
    z = x.clone().requires_grad_(True)
    term = per_image_loss(guidance_target_logits(pipe.defended_classifier(seed=0), z), y, "margin")
    term_grad = torch.autograd.grad(term.sum(), z)[0]
    torch.testing.assert_close(guided.gradient, plain.gradient + 2.0 * term_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(guided.loss, plain.loss)  # the worst iterate is still chosen by the defense's loss


def guided_objectives(targets, weight=1.0, norm="Linf", eot_samples=2):
    """The plain and the guided objective at the same points with the same purification draws (same seed)."""
    pipe = dummy_pipeline()
    x, y = dummy_images(3), torch.tensor([0, 1, 2])
    outs = [AttackObjective(pipe.defended_classifier(seed=0, guidance="latent"), "margin", eot_samples,
                            guidance_weight=w, norm=norm)(x, y, targets) for w in (0.0, weight)]
    return pipe, x, y, *outs


def test_targeted_runs_keep_their_pull_with_the_guidance_term():
    """The old objective replaced the targeted pull by ``loss + w * guidance margin``, so 'targeted' runs with the
    guidance term were untargeted (bit-identical with and without targets). Now both terms aim at the target."""
    targets = torch.tensor([2, 3, 0])
    _, x, y, _, untargeted = guided_objectives(None)
    pipe, _, _, plain_targeted, targeted = guided_objectives(targets)
    assert not torch.allclose(targeted.gradient, untargeted.gradient)
    assert not torch.allclose(targeted.objective, untargeted.objective)
    torch.testing.assert_close(targeted.loss, untargeted.loss)  # kept points are still compared on one scale
    # The guidance part of the targeted objective is the guidance network's targeted margin towards `targets`.
    z = x.clone().requires_grad_(True)
    logits = guidance_target_logits(pipe.defended_classifier(seed=0), z).double()
    pull = logits.gather(1, targets[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    pull_grad = torch.autograd.grad(pull.sum(), z)[0]
    scale = targeted.guidance_scale.float().view(-1, 1, 1, 1)
    torch.testing.assert_close(targeted.gradient, plain_targeted.gradient + scale * pull_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_the_normalised_guidance_term_has_the_end_to_end_gradients_scale(norm, targeted):
    """At weight w the guidance term's gradient has w times the end-to-end gradient's dual norm (L1 for Linf, L2
    for L2), per image, whatever its raw size."""
    targets = torch.tensor([2, 3, 0]) if targeted else None
    _, _, _, plain, guided = guided_objectives(targets, weight=0.5, norm=norm)
    term_gradient = guided.gradient - plain.gradient
    torch.testing.assert_close(dual_norm(term_gradient, norm), 0.5 * dual_norm(plain.gradient, norm), rtol=1e-3,
                               atol=1e-7)
    assert (guided.guidance_scale > 0).all()


def test_apgd_fixes_the_guidance_scale_per_run():
    """Within a run the objective is one function: the scale passed in is used as given, not re-measured."""
    pipe, x, y, _, guided = guided_objectives(None)
    fixed = torch.full((3,), 7.0, dtype=torch.float64)
    again = AttackObjective(pipe.defended_classifier(seed=0, guidance="latent"), "margin", 2, guidance_weight=1.0)(
        x, y, guidance_scale=fixed)
    torch.testing.assert_close(again.guidance_scale, fixed)
    assert not torch.allclose(again.gradient, guided.gradient)
    x_adv = apgd(pipe.defended_classifier(seed=0, guidance="latent"), x, y, eps=0.1, steps=2, guidance_weight=1.0,
                 generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


# ---------------------------------------------------------------------------------------------------- selection
def test_selection_scores_count_misclassified_draws_and_mean_margins():
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=4)
    wrong, margin = selection_scores(model, x, y, 3)
    assert (wrong == 0).all()
    torch.testing.assert_close(margin, per_image_loss(model(x), y, "margin"))


def test_selection_on_fresh_draws_never_returns_the_clean_input_and_keeps_autoattacks_behaviour():
    model = NoisyLinear()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model.linear(x).argmax(-1)
    stats = AttackStats()
    x_adv = apgd(model, x, y, eps=1e-3, steps=6, restarts=2, eot_samples=2, generator=torch.Generator().manual_seed(0),
                 selection_model=NoisyLinear(seed=5), stats=stats)  # too small to flip anything
    assert ((x_adv - x).flatten(1).abs().max(1).values > 0).all()
    assert (x_adv - x).abs().max() <= 1e-3 + 1e-7
    assert not stats.broken_on_selection.any()
    # Nothing broken: every image spends the whole budget (2 runs x 6 steps x EOT 2, plus each run's start).
    assert stats.gradient_evaluations.tolist() == [2 * 7 * 2] * 6
    assert (stats.forward_evaluations > 0).all()


def test_the_kept_point_and_the_early_stop_are_decided_on_the_selection_models_draws():
    """An attack that cannot flip the model it differentiates, judged by a selection model that misclassifies every
    point: each image is broken at the first selection (after the first checkpoint) and stops there."""
    model = linear_classifier()
    x, y = images_it_gets_right(model, n=4)
    swap = linear_classifier(seed=1)

    class Wrong(nn.Module):
        def forward(self, z):
            logits = swap(z)
            return logits.scatter(1, y.repeat(z.shape[0] // y.shape[0])[:, None], -1e9)

    stats = AttackStats()
    x_adv = apgd(model, x, y, eps=1e-3, steps=20, restarts=2, selection_model=Wrong(), stats=stats,
                 generator=torch.Generator().manual_seed(0))
    assert stats.broken_on_selection.all() and (model(x_adv).argmax(-1) == y).all()
    assert stats.gradient_evaluations.tolist() == [checkpoints(20)[0] + 1] * 4
    assert ((x_adv - x).flatten(1).abs().max(1).values > 0).all()


def test_early_stop_spends_fewer_gradients_on_a_broken_image_and_the_full_budget_on_a_robust_one():
    model = linear_classifier(num_classes=2, seed=0)
    x, y = images_it_gets_right(model, n=32)
    breakable = model(best_linf_attack(model, x, y, 0.3)).argmax(-1) != y
    assert breakable.any() and (~breakable).any()
    stats = AttackStats()
    x_adv = apgd(model, x, y, eps=0.3, steps=20, restarts=2, generator=torch.Generator().manual_seed(0), stats=stats)
    full = 2 * (20 + 1)
    assert torch.equal(model(x_adv).argmax(-1) != y, breakable)  # early stop loses nothing here
    assert (stats.gradient_evaluations[breakable] < full).all()
    assert (stats.gradient_evaluations[~breakable] == full).all()
    assert torch.equal(stats.broken_on_selection, breakable)
    # Without early stop every image spends the whole budget.
    never = AttackStats()
    apgd(model, x, y, eps=0.3, steps=20, restarts=2, generator=torch.Generator().manual_seed(0), early_stop=False,
         stats=never)
    assert (never.gradient_evaluations == full).all()


def test_when_every_image_is_broken_the_rest_of_the_budget_is_skipped_but_reported_to_progress():
    model = linear_classifier(num_classes=2, seed=0)
    x, y = images_it_gets_right(model, n=4)
    ticks = []
    x_adv, history = apgd(model, x, y, eps=1.0, steps=10, restarts=3, generator=torch.Generator().manual_seed(0),
                          callback=ticks.append, record_at=(5, 30))
    assert sum(ticks) == 30 and len(ticks) < 30
    assert (model(x_adv).argmax(-1) != y).all()
    torch.testing.assert_close(history[30], x_adv, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- AutoAttack rand
def test_autoattack_rand_never_returns_the_clean_input_for_an_unflipped_point():
    """torchattacks' APGD hands back the clean image for every point one pass did not flip; re-scored over K runs
    of a randomised defense that is a clean image. Ours returns the worst iterate instead."""
    model = NoisyLinear()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model.linear(x).argmax(-1)
    stats = AttackStats()
    x_adv = autoattack_rand(model, x, y, eps=1e-3, steps=3, eot_samples=2, stats=stats)  # too small to flip anything
    assert ((x_adv - x).flatten(1).abs().max(1).values > 0).all()
    assert (x_adv - x).abs().max() <= 1e-3 + 1e-7
    # Both APGDs run their whole budget on every image (the published attack): 2 x (3 steps + start) x EOT 2.
    assert stats.gradient_evaluations.tolist() == [16] * 6


# ---------------------------------------------------------------------------------------------------- convergence
def robust_per_image(model, x, y, x_adv) -> dict:
    """{score: [robust per image]} for a deterministic model (every score agrees)."""
    robust = ((model(x).argmax(-1) == y) & (model(x_adv).argmax(-1) == y)).tolist()
    return {"all": robust, "majority": robust, "single": robust}


def test_the_convergence_check_fails_a_weak_attack_and_passes_the_default():
    """A linear model whose images need the whole Linf ball to flip. PGD-5 with a short fixed step (and CE) stops
    half-way, so doubling its steps breaks many more images: the check must say "not converged". The default
    attack (APGD, margin loss) gives the same number at 100 and 200 iterations: the check passes."""
    model = linear_classifier(num_classes=2, seed=0)
    x, y = images_it_gets_right(model, n=64)  # paired, exact test: 32 images leave 4 flips (p = 0.06), 64 enough
    weak = {steps: pgd(model, x, y, eps=0.3, steps=steps, step_size=0.3 / 8, loss="ce", random_start=False)
            for steps in (5, 10)}
    check = check_converged_paired("linear", "the steps", ("5 steps", robust_per_image(model, x, y, weak[5])),
                                   ("10 steps", robust_per_image(model, x, y, weak[10])))
    assert not check.passed and "not converged" in check.detail
    strong = {steps: apgd(model, x, y, eps=0.3, steps=steps, generator=torch.Generator().manual_seed(0))
              for steps in (100, 200)}
    check = check_converged_paired("linear", "the steps", ("100 steps", robust_per_image(model, x, y, strong[100])),
                                   ("200 steps", robust_per_image(model, x, y, strong[200])))
    assert check.passed, check.detail
