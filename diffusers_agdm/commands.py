"""The `agdm purify`, `agdm info` and `agdm push` subcommands (`agdm evaluate` lives with the evaluation).

Each works on the embedded default pipeline when `--pipeline` is not given.
"""

import argparse
import json
from pathlib import Path


def _pipeline_arg(parser):
    parser.add_argument("--pipeline", default=None,
                        help="pipeline folder or Hub id (default: the embedded MNIST pipeline)")


# ---------------------------------------------------------------------------------------------------------- purify
def add_purify_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "purify", help="purify image files and write them with a side-by-side comparison",
        description="Purify images (PNG/JPEG files of the pipeline's size) and write <name>_purified.png for each, "
                    "plus comparison.png: input above, purified below, with the classifier's predictions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--output", required=True, help="folder for the purified images and comparison.png")
    _pipeline_arg(parser)
    parser.add_argument("--guidance", default=None, choices=("latent", "pixel", "none"),
                        help="default: the pipeline's")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's")
    parser.add_argument("--strength", type=float, default=None, help="t* as a fraction; default: the pipeline's")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_purify)


def run_purify(args, argv=None) -> int:
    import torch
    from PIL import Image

    from .cli import load_pipeline

    pipe = load_pipeline(args.pipeline)
    files = [Path(p) for p in args.images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"No such image file: {', '.join(missing)}")
    mode = "L" if pipe.unet.config.in_channels == 1 else "RGB"
    inputs = [Image.open(p).convert(mode) for p in files]
    out = pipe(inputs, guidance=args.guidance, guidance_scale=args.guidance_scale, strength=args.strength,
               num_inference_steps=args.num_inference_steps, generator=torch.Generator().manual_seed(args.seed),
               output_type="pil")
    before = None
    if pipe.classifier is not None:
        with torch.no_grad():
            before = pipe.classifier_logits(pipe.prepare_images(inputs)).argmax(-1)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for path, image in zip(files, out.images):
        image.save(output / f"{path.stem}_purified.png")
    names = _class_names(pipe)
    comparison = output / "comparison.png"
    save_comparison(inputs, out.images, comparison, titles=[p.name for p in files],
                    labels_before=None if before is None else [names(i) for i in before.tolist()],
                    labels_after=None if out.labels is None else [names(i) for i in out.labels.tolist()])
    for i, path in enumerate(files):
        verdict = "" if out.labels is None else f"  predicted {names(out.labels[i].item())}"
        if before is not None:
            verdict += f" (before purification: {names(before[i].item())})"
        print(f"{path} -> {output / (path.stem + '_purified.png')}{verdict}")
    print(f"side by side: {comparison}")
    return 0


def _class_names(pipe):
    config = getattr(pipe.classifier, "config", None)
    labels = getattr(config, "labels", None) if config is not None else None
    id2label = getattr(config, "id2label", None) if config is not None else None
    return lambda i: str(labels[i]) if labels else str(id2label.get(i, i)) if id2label else str(i)


def save_comparison(inputs, purified, path, *, titles, labels_before=None, labels_after=None) -> None:
    """Inputs on the top row, purified images below, with predictions in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(inputs)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.6, 4.2), squeeze=False)
    for i in range(n):
        for row, (image, label, kind) in enumerate(((inputs[i], labels_before, "input"),
                                                    (purified[i], labels_after, "purified"))):
            ax = axes[row][i]
            ax.imshow(image, cmap="gray" if image.mode == "L" else None, vmin=0, vmax=255)
            title = f"{kind}" + (f": {label[i]}" if label else "")
            ax.set_title(f"{titles[i]}\n{title}" if row == 0 else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------ info
def add_info_command(subparsers) -> None:
    parser = subparsers.add_parser("info", help="what a pipeline holds: components, sizes, config, its card's numbers",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _pipeline_arg(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run_info)


def pipeline_info(pipe, folder: Path | None) -> dict:
    from . import __version__
    from .hub import PURIFICATION_CONFIG_KEYS

    components = {}
    for name, component in pipe.components.items():
        if component is None:
            continue
        entry = {"class": f"{type(component).__module__}.{type(component).__name__}"}
        if hasattr(component, "parameters"):
            entry["parameters"] = sum(p.numel() for p in component.parameters())
        if folder is not None and (folder / name).is_dir():
            entry["bytes_on_disk"] = sum(f.stat().st_size for f in (folder / name).rglob("*") if f.is_file())
        if hasattr(component, "config"):
            entry["config"] = {k: v for k, v in dict(component.config).items() if not k.startswith("_")}
        components[name] = entry
    info = {"diffusers_agdm_version": __version__, "source": str(folder) if folder else None,
            "purification_defaults": {k: pipe.config[k] for k in PURIFICATION_CONFIG_KEYS if k in pipe.config},
            "components": components, "card_results": None}
    if folder is not None and (folder / "README.md").is_file():
        from huggingface_hub import ModelCard

        card = ModelCard.load(folder / "README.md")
        index = card.data.to_dict().get("model-index") or []
        info["card_results"] = [m for entry in index for result in entry.get("results", [])
                                for m in result.get("metrics", [])]
    return info


def run_info(args, argv=None) -> int:
    from .cli import load_pipeline
    from .pretrained import default_pipeline_path

    pipe = load_pipeline(args.pipeline)
    folder = Path(pipe.name_or_path) if getattr(pipe, "name_or_path", None) else None
    if args.pipeline is None:
        folder = default_pipeline_path()
    info = pipeline_info(pipe, folder if folder is not None and folder.is_dir() else None)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{type(pipe).__name__} from {info['source'] or args.pipeline}")
    print("\ncomponents:")
    for name, entry in info["components"].items():
        size = f"  {entry['bytes_on_disk'] / 1e6:.2f} MB" if "bytes_on_disk" in entry else ""
        params = f"  {entry['parameters']:,} parameters" if "parameters" in entry else ""
        print(f"  {name:12s} {entry['class'].rsplit('.', 1)[-1]}{params}{size}")
    print("\npurification defaults:")
    for key, value in info["purification_defaults"].items():
        print(f"  {key:20s} {value}")
    print("\nresults recorded in its model card:")
    if not info["card_results"]:
        print("  none")
    for metric in info["card_results"] or []:
        value = metric["value"]
        print(f"  {metric['name']:60s} {100 * value:.1f}%" if isinstance(value, float) and value <= 1 else
              f"  {metric['name']:60s} {value}")
    return 0


# ------------------------------------------------------------------------------------------------------------ push
def add_push_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "push", help="upload a pipeline folder with its model card to the Hub",
        description="Upload a saved pipeline (safetensors) and its README.md model card to a Hub repo; a folder "
                    "without a card gets one generated from the project's template.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _pipeline_arg(parser)
    parser.add_argument("--repo_id", required=True, help="e.g. your-name/agdm-mnist")
    parser.add_argument("--token", default=None)
    parser.add_argument("--private", action="store_true")
    parser.set_defaults(func=run_push)


def run_push(args, argv=None) -> int:
    import shutil
    import tempfile

    from .cli import load_pipeline
    from .hub import make_model_card, push_folder_to_hub
    from .pretrained import default_pipeline_path

    folder = default_pipeline_path() if args.pipeline is None else Path(args.pipeline)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json); `agdm push` uploads a "
                         "local folder.")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / folder.name
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "*.bin", "*.pt"))
        if not (staged / "README.md").is_file():
            make_model_card(load_pipeline(str(folder)), args.repo_id).save(staged / "README.md")
        result = push_folder_to_hub(staged, args.repo_id, token=args.token, private=args.private or None)
    print(f"pushed {folder} to {args.repo_id}: {result}")
    return 0
