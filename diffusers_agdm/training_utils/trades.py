"""The adversarial loss of the guidance network: TRADES on diffused inputs (docs/method.md).

    L(phi) = CE(f_phi(x_t, t), y) + beta * KL( softmax f_phi(x_t, t) || softmax f_phi(x~_t, t) )
             [+ lambda_f * || h_phi(x~_t, t) - h_phi(x_t, t) ||^2]

x_t is the clean image diffused to t ~ U{0..t_max}; x~ is found by PGD in the eps-ball around the clean image,
maximising the KL term, and is diffused with the same noise and t.
"""

import torch
import torch.nn.functional as F

from ..attacks.pgd import ascent_direction, project
from ..utils.diffusion import diffuse01


def _kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(softmax clean || softmax adv), summed over the batch (TRADES' criterion)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")


def kl_pgd(guidance, images01, noise, timesteps, alphas_cumprod, *, norm: str = "Linf", eps: float = 0.3,
           step_size: float = 0.05, steps: int = 10) -> torch.Tensor:
    """TRADES' inner maximisation: the [0, 1] images within `eps` of `images01` whose diffused versions maximise
    the KL divergence of the guidance network's predictions from those on the diffused clean images."""
    was_training = guidance.training
    guidance.eval()
    with torch.no_grad():
        clean_logits = guidance(diffuse01(images01, noise, alphas_cumprod, timesteps), timesteps).logits
    # TRADES starts from a tiny random offset: at delta = 0 the KL gradient is exactly zero.
    adv = (images01 + 0.001 * torch.randn_like(images01)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = _kl(clean_logits, guidance(diffuse01(adv, noise, alphas_cumprod, timesteps), timesteps).logits)
            (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * ascent_direction(grad, norm)
        adv = (images01 + project(adv - images01, norm, eps)).clamp(0, 1).detach()
    guidance.train(was_training)
    return adv


def trades_loss(guidance, images01, labels, alphas_cumprod, *, t_max: int, beta: float = 6.0, norm: str = "Linf",
                eps: float = 0.3, step_size: float = 0.05, steps: int = 10, feature_weight: float = 0.0):
    """One batch of the guidance network's adversarial loss; returns (loss, logs). Draws t and the noise from the
    global torch RNG (restored exactly when training resumes from a checkpoint)."""
    timesteps = torch.randint(0, t_max + 1, (images01.shape[0],), device=images01.device)
    noise = torch.randn_like(images01)
    adv = kl_pgd(guidance, images01, noise, timesteps, alphas_cumprod, norm=norm, eps=eps, step_size=step_size,
                 steps=steps)
    clean_out = guidance(diffuse01(images01, noise, alphas_cumprod, timesteps), timesteps)
    adv_out = guidance(diffuse01(adv, noise, alphas_cumprod, timesteps), timesteps)
    ce = F.cross_entropy(clean_out.logits, labels)
    kl = _kl(clean_out.logits, adv_out.logits) / images01.shape[0]
    loss = ce + beta * kl
    logs = {"ce": ce.item(), "kl": kl.item(),
            "train_clean_accuracy": (clean_out.logits.argmax(1) == labels).float().mean().item(),
            "train_adversarial_accuracy": (adv_out.logits.argmax(1) == labels).float().mean().item()}
    if feature_weight:
        feature = (adv_out.features - clean_out.features).pow(2).sum(1).mean()
        loss = loss + feature_weight * feature
        logs["feature_distance"] = feature.item()
    return loss, logs


def _correct(guidance, noisy, timesteps, labels) -> torch.Tensor:
    return (guidance(noisy, timesteps).logits.argmax(1) == labels).sum()


@torch.no_grad()
def guidance_accuracy(guidance, images01, labels, alphas_cumprod, *, t_max: int, norm: str, eps: float,
                      step_size: float, steps: int, batch_size: int = 250, seed: int = 0) -> dict:
    """Clean and adversarial (under the training attack) accuracy of the guidance network on diffused images, with
    t and the noise drawn from `seed` so that numbers from different steps of a run compare."""
    generator = torch.Generator().manual_seed(seed)
    correct_clean = correct_adv = 0
    for start in range(0, images01.shape[0], batch_size):
        x, y = images01[start:start + batch_size], labels[start:start + batch_size]
        timesteps = torch.randint(0, t_max + 1, (x.shape[0],), generator=generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        adv = kl_pgd(guidance, x, noise, timesteps, alphas_cumprod, norm=norm, eps=eps, step_size=step_size,
                     steps=steps)
        correct_clean += _correct(guidance, diffuse01(x, noise, alphas_cumprod, timesteps), timesteps, y)
        correct_adv += _correct(guidance, diffuse01(adv, noise, alphas_cumprod, timesteps), timesteps, y)
    n = images01.shape[0]
    return {"clean_accuracy": float(correct_clean) / n, "adversarial_accuracy": float(correct_adv) / n}
