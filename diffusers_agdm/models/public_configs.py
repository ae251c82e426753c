"""Configs of public checkpoints this project builds on, for offline stand-ins with random weights (the tests of the
CIFAR-10 recipe, the CIFAR-scale throughput benchmark) where the Hub cannot be reached."""

# google/ddpm-cifar10-32's unet config.json and scheduler_config.json (a flat DDPMPipeline repo).
DDPM_CIFAR10_UNET = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_CIFAR10_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                          "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                          "trained_betas": None, "variance_type": "fixed_small"}


def init_kwargs(config: dict) -> dict:
    """A config without its `_` bookkeeping keys, as a model's constructor takes it."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
