import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_agdm.attacks import (
    BPDAClassifier,
    attack_loss,
    autoattack,
    eot_gradient,
    pgd,
    rescore,
    surrogate_defense,
)
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
    torch.testing.assert_close(attack_loss(logits, labels, "ce"), F.cross_entropy(logits, labels, reduction="sum"))
    # margin: best wrong logit minus the true one, summed: (1.0 - 2.0) + (3.0 - (-1.0))
    torch.testing.assert_close(attack_loss(logits, labels, "margin"), torch.tensor(3.0))


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
    x_adv = pgd(model, x, y, eps=0.1, steps=1, step_size=0.05, eot_samples=4, random_start=False)
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
