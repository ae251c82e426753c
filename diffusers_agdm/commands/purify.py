"""`agdm purify`: purify image files and write them with a side-by-side comparison."""

import argparse
from collections import Counter
from pathlib import Path

from ..settings_table import add_purification_arguments, purification_overrides
from ..utils.flags import HelpFormatter
from . import (
    EXIT_OK,
    BaseAgdmCLICommand,
    add_num_threads_argument,
    add_pipeline_argument,
    load_pipeline,
    set_num_threads,
)

COMPARISON = "comparison.png"


class PurifyCommand(BaseAgdmCLICommand):
    name = "purify"
    help = "purify image files and write them with a side-by-side comparison"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Purify images (PNG/JPEG/TIFF files of any size and mode, 8-bit, 16-bit or float; a digit "
                        "dark on light is inverted for an MNIST pipeline, another size is resized, and each change "
                        "is printed) and write <name>_purified.png for each to --output_dir (inputs with the same "
                        "name get distinct numbered outputs), plus comparison.png: input above, purified below, "
                        "with the classifier's predictions.",
            formatter_class=HelpFormatter, allow_abbrev=False)
        parser.add_argument("images", nargs="*", help="image files")
        parser.add_argument("--sample", action=argparse.BooleanOptionalAction, default=False,
                            help="also purify the real held-out MNIST test digit that ships with the package")
        parser.add_argument("--output_dir", default="outputs/purified",
                            help="folder for the purified images and comparison.png")
        add_pipeline_argument(parser)
        add_purification_arguments(parser)
        parser.add_argument("--seed", type=int, default=0, help="seed of the purification noise")
        add_num_threads_argument(parser)
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        import torch

        from ..default_pipeline import sample_image_path
        from ..pipelines.inputs import prepare_user_image
        from ..utils.images import image_to_unit_range
        from ..utils.paths import check_output_dir

        args = self.args
        files = [Path(p) for p in args.images] + ([sample_image_path()] if args.sample else [])
        if not files:
            raise ValueError("no image to purify: name image files, or pass --sample for the shipped digit.")
        inputs = [read_image(p) for p in files]  # every file readable before the pipeline loads
        for path, image in zip(files, inputs):  # and of a pixel type and range it can be read as
            image_to_unit_range(image, where=str(path))
        existed = Path(args.output_dir).exists()
        output = check_output_dir(args.output_dir)
        try:
            targets = [output / name for name in output_names(files)]
            comparison = output / COMPARISON
            for path in files:  # no output, the comparison included, may replace an input
                if any(path.resolve() == t.resolve() for t in [*targets, comparison]):
                    raise ValueError(f"purifying would overwrite the input {path}; choose another --output_dir.")
            set_num_threads(args.num_threads)
            pipe = load_pipeline(args.pipeline)
            batch = []
            for path, image in zip(files, inputs):  # any size, mode and polarity, prepared as the demo does
                tensor, notes = prepare_user_image(image, pipe.sample_size, pipe.unet.config.in_channels,
                                                   where=str(path))
                batch.append(tensor)
                if notes:
                    print(f"{path}: {', '.join(notes)}")
            batch = torch.stack(batch)
            overrides = purification_overrides(args)
            out = pipe(batch, generator=torch.Generator().manual_seed(args.seed), output_type="pil", **overrides)
        except BaseException:  # a failed run leaves no empty output folder behind
            if not existed and output.is_dir() and not any(output.iterdir()):
                output.rmdir()
            raise
        before = None
        if pipe.classifier is not None:
            with torch.no_grad():
                before = pipe.classifier_logits(batch).argmax(-1)
        for target, image in zip(targets, out.images):
            image.save(target)
        names = class_names(pipe)
        shown = pipe.image_processor.postprocess(batch, output_type="pil")  # what the pipeline was given
        save_comparison(shown, out.images, comparison, titles=[p.name for p in files],
                        labels_before=None if before is None else [names(i) for i in before.tolist()],
                        labels_after=None if out.labels is None else [names(i) for i in out.labels.tolist()])
        for i, (path, target) in enumerate(zip(files, targets)):
            verdict = "" if out.labels is None else f"  predicted {names(out.labels[i].item())}"
            if before is not None:
                verdict += f" (before purification: {names(before[i].item())})"
            print(f"{path} -> {target}{verdict}")
        print(f"side by side: {comparison}")
        return EXIT_OK


def read_image(path: Path):
    """The decoded image (a truncated or unreadable file fails here, with its name, not halfway through)."""
    from PIL import Image, ImageOps

    if not path.is_file():
        raise ValueError(f"No such image file: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)  # a phone photo upright, as a viewer shows it (a copy)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image ({err}).") from err


def output_names(files: list[Path]) -> list[str]:
    """`<stem>_purified.png`, numbered by position when two inputs share a stem (`a/x.png b/x.png` ->
    `x_1_purified.png`, `x_2_purified.png`): one output never silently replaces another."""
    stems = Counter(p.stem for p in files)
    names = [f"{p.stem}_purified.png" if stems[p.stem] == 1 else f"{p.stem}_{i + 1}_purified.png"
             for i, p in enumerate(files)]
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"two outputs would share the name {repeated[0]}; rename an input.")
    return names


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


