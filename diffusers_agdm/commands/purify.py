"""`agdm purify`: purify image files and write them with a side-by-side comparison."""

import argparse
from pathlib import Path

from . import EXIT_OK, BaseAgdmCLICommand, add_pipeline_argument


class PurifyCommand(BaseAgdmCLICommand):
    name = "purify"
    help = "purify image files and write them with a side-by-side comparison"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Purify images (PNG/JPEG files of the pipeline's size) and write <name>_purified.png for "
                        "each, plus comparison.png: input above, purified below, with the classifier's predictions.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        parser.add_argument("images", nargs="+", help="image files")
        parser.add_argument("--output", required=True, help="folder for the purified images and comparison.png")
        add_pipeline_argument(parser)
        parser.add_argument("--guidance", default=None, choices=("latent", "pixel", "none"),
                            help="default: the pipeline's")
        parser.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's")
        parser.add_argument("--strength", type=float, default=None, help="t* as a fraction; default: the pipeline's")
        parser.add_argument("--num_inference_steps", type=int, default=None, help="default: the pipeline's")
        parser.add_argument("--seed", type=int, default=0)
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        import torch
        from PIL import Image

        from ..pretrained import load_pipeline

        args = self.args
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
        names = class_names(pipe)
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
        return EXIT_OK


def class_names(pipe):
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


