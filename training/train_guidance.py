#!/usr/bin/env python
"""Train the AGDM guidance network with the adversarial loss (TRADES on diffused inputs) while the diffusion model
and the classifier stay frozen, and write a complete purification pipeline with its model card.

    accelerate launch training/train_guidance.py --pretrained_model_name_or_path runs/ddpm-mnist \\
        --classifier_name_or_path runs/classifier-mnist --dataset_name mnist --output_dir runs/agdm-mnist
"""

import time

import torch

from diffusers_agdm import AdversarialGuidedPurificationPipeline, GuidanceModel
from diffusers_agdm.loading import load_classifier, load_diffusion_source
from diffusers_agdm.settings_table import UNTUNED_DEFAULTS, add_purification_arguments
from diffusers_agdm.training_utils import (
    add_data_args,
    add_hub_args,
    add_training_args,
    build_accelerator,
    dataset_label,
    load_training_data,
    parse_training_args,
    train_loop,
)
from diffusers_agdm.training_utils.argtypes import (
    check_group_norm,
    check_model_source,
    check_steps_fit,
    comma_list,
    finite,
    int_at_least,
)
from diffusers_agdm.training_utils.output import save_and_push
from diffusers_agdm.training_utils.trades import guidance_accuracy, kl_pgd, trades_loss
from diffusers_agdm.utils import sample_size
from diffusers_agdm.utils.flags import ArgumentParser
from diffusers_agdm.utils.schedule import start_timestep


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                        help="A diffusion pipeline (folder or Hub id) with a UNet and a scheduler.")
    parser.add_argument("--classifier_name_or_path", type=str, default=None,
                        help="The downstream classifier to ship in the pipeline (default: the source's, if any).")
    add_training_args(parser, batch_size=64, max_train_steps=1500, learning_rate=1e-3)
    add_data_args(parser, eval_samples=500)
    add_hub_args(parser)
    g = parser.add_argument_group("guidance network")
    g.add_argument("--block_out_channels", type=comma_list(int_at_least(1)), default=(32, 64, 128),
                   help="Widths of the blocks, comma-separated (e.g. 32,64,128).")
    g.add_argument("--feature_dim", type=int_at_least(1), default=128, help="Width of the feature vector h(x_t, t).")
    g.add_argument("--norm_num_groups", type=int_at_least(1), default=8, help="Must divide every block width.")
    a = parser.add_argument_group("adversarial loss (TRADES on diffused inputs)")
    a.add_argument("--beta", type=finite(0), default=6.0, help="Weight of the KL term.")
    a.add_argument("--norm", type=str, default="Linf", choices=["Linf", "L2"],
                   help="Norm of the training attack's threat model.")
    a.add_argument("--eps", type=finite(0, inclusive_min=False), default=0.3,
                   help="Radius of the training attack's ball, images in [0, 1].")
    # The attack budget is named as in `agdm evaluate` (--steps, --step_size); the PGD-prefixed names stay.
    a.add_argument("--step_size", "--pgd_step_size", dest="pgd_step_size", type=finite(0, inclusive_min=False),
                   default=0.05, help="Step of the training attack (PGD on the KL term).")
    a.add_argument("--steps", "--pgd_steps", dest="pgd_steps", type=int_at_least(1), default=10,
                   help="Iterations of the training attack.")
    a.add_argument("--t_max", type=int_at_least(0), default=None,
                   help="Largest training timestep (default: the pipeline's purification strength x schedule).")
    a.add_argument("--feature_weight", type=finite(0), default=0.0,
                   help="Weight of the feature-consistency term ||h(x~_t) - h(x_t)||^2 (off by default).")
    p = parser.add_argument_group("purification defaults saved with the pipeline")
    add_purification_arguments(p, ("strength", "num_inference_steps"), default_help="the source pipeline's, else "
                               "the untuned default")
    add_purification_arguments(p, ("guidance_scale",), defaults=UNTUNED_DEFAULTS)
    return parse_training_args(parser, argv, __file__, check=_check_args)


def _check_args(args):
    check_model_source("--pretrained_model_name_or_path", args.pretrained_model_name_or_path, ("model_index.json",))
    if args.classifier_name_or_path:
        check_model_source("--classifier_name_or_path", args.classifier_name_or_path,
                           ("config.json", "model_index.json"))
    check_group_norm(args.block_out_channels, args.norm_num_groups)


def main(argv=None):
    args = parse_args(argv)
    accelerator = build_accelerator(args)
    source = load_diffusion_source(args.pretrained_model_name_or_path)
    unet, scheduler = source.unet, source.scheduler
    unet.requires_grad_(False)
    classifier = (load_classifier(args.classifier_name_or_path) if args.classifier_name_or_path
                  else getattr(source, "classifier", None))
    if classifier is not None:
        classifier.requires_grad_(False)
    strength = _first_set(args.strength, getattr(source.config, "strength", None), UNTUNED_DEFAULTS["strength"])
    num_inference_steps = _first_set(args.num_inference_steps, getattr(source.config, "num_inference_steps", None),
                                     UNTUNED_DEFAULTS["num_inference_steps"])
    num_train_timesteps = scheduler.config.num_train_timesteps
    check_steps_fit(strength, num_inference_steps, num_train_timesteps)  # before the data and the loop
    t_max = args.t_max if args.t_max is not None else start_timestep(strength, num_train_timesteps)
    if not 0 <= t_max < num_train_timesteps:
        raise ValueError(f"--t_max must be in [0, {num_train_timesteps - 1}], got {t_max}.")
    size = sample_size(unet)

    train_data, monitor = load_training_data(args, channels=unet.config.in_channels, size=size, what="the UNet")
    num_classes = train_data.num_classes
    if classifier is not None:
        from diffusers_agdm.pipelines.components import classifier_num_classes

        n = classifier_num_classes(classifier)
        if n is not None and n != num_classes:
            raise ValueError(f"The classifier predicts {n} classes but {train_data.name} has {num_classes}.")
    guidance = GuidanceModel(in_channels=unet.config.in_channels, sample_size=size, num_classes=num_classes,
                             block_out_channels=args.block_out_channels,
                             feature_dim=args.feature_dim, num_train_timesteps=num_train_timesteps,
                             norm_num_groups=args.norm_num_groups)
    alphas_cumprod = scheduler.alphas_cumprod
    attack = dict(norm=args.norm, eps=args.eps, step_size=args.pgd_step_size, steps=args.pgd_steps)

    def loss_fn(model, images, labels):
        return trades_loss(model, images, labels, alphas_cumprod, t_max=t_max, beta=args.beta,
                           feature_weight=args.feature_weight, **attack)

    def eval_fn(model):
        return guidance_accuracy(model, monitor.images.to(accelerator.device), monitor.labels.to(accelerator.device),
                                 alphas_cumprod, t_max=t_max, seed=args.seed, **attack)

    def build_pipeline(model):
        return AdversarialGuidedPurificationPipeline(
            unet=unet, scheduler=scheduler, guidance=model, classifier=classifier, strength=strength,
            num_inference_steps=num_inference_steps, guidance_scale=args.guidance_scale, guidance_mode="latent")

    # The purification defaults are checked now (with the untrained network), not after the training loop.
    _check_purification_defaults(build_pipeline(guidance), strength, num_inference_steps)
    preview = (monitor or train_data).subset(0, 8)

    def purified_grid(model):  # rows: clean, attacked (training attack at t=0), purified with latent guidance
        pipe = build_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        x = preview.images.to(accelerator.device)
        t0 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        adv = kl_pgd(model, x, torch.zeros_like(x), t0, alphas_cumprod, **attack)
        with torch.no_grad():
            purified = pipe.purify(adv, generator=torch.Generator().manual_seed(0))
        return torch.cat([x, adv, purified])

    unet.to(accelerator.device)
    start = time.time()
    result = train_loop(accelerator, args, guidance, train_data, loss_fn, model_name="guidance",
                        project_name="train_guidance", eval_fn=eval_fn if monitor is not None else None,
                        image_fn=purified_grid)
    pipe = build_pipeline(result.model)
    description = (f"Guidance network trained with TRADES on diffused inputs (beta {args.beta}, {args.norm} eps "
                   f"{args.eps}, {args.pgd_steps} PGD steps of {args.pgd_step_size}, t in [0, {t_max}]) on "
                   f"{train_data.name}; the diffusion model ({args.pretrained_model_name_or_path}) is frozen.")
    save_and_push(accelerator, args, pipe, result, time.time() - start, dataset=dataset_label(args),
                  base_model=args.pretrained_model_name_or_path, description=description,
                  extra="Metrics are the guidance network's own accuracy on diffused images (clean, and under the "
                        "training attack), not the robustness of the purification defense.")


def _first_set(*values):
    """The first value that is not None (0 is a value, not "unset")."""
    return next(v for v in values if v is not None)


def _check_purification_defaults(pipe, strength, num_inference_steps) -> None:
    check_steps_fit(strength, num_inference_steps, pipe.scheduler.config.num_train_timesteps)
    pipe.resolve_settings(strength=strength, num_inference_steps=num_inference_steps)


if __name__ == "__main__":
    import sys

    from diffusers_agdm.exits import run_main

    sys.exit(run_main(main, "train_guidance.py"))  # 0 done, 2 bad input or environment, 3 a bug, 130 interrupted
