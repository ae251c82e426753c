"""`agdm info`: what a pipeline holds: components, sizes, purification defaults and its card's numbers."""

import argparse
import json
from pathlib import Path

from ..utils.flags import HelpFormatter
from . import EXIT_OK, BaseAgdmCLICommand, add_pipeline_argument, load_pipeline


class InfoCommand(BaseAgdmCLICommand):
    name = "info"
    help = "what a pipeline holds: components, sizes, config, its card's numbers"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(cls.name, help=cls.help, description=cls.help,
                                       formatter_class=HelpFormatter, allow_abbrev=False)
        add_pipeline_argument(parser)
        parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=False,
                            help="print JSON instead of text")
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        from ..default_pipeline import default_pipeline_path

        args = self.args
        pipe = load_pipeline(args.pipeline)
        folder = Path(pipe.name_or_path) if getattr(pipe, "name_or_path", None) else None
        if args.pipeline is None:
            folder = default_pipeline_path()
        info = pipeline_info(pipe, folder if folder is not None and folder.is_dir() else None)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
            return EXIT_OK
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
        if info.get("campaign_status"):
            print(f"  {info['campaign_status']}")
        if not info["card_results"]:
            print("  none")
        for metric in info["card_results"] or []:
            value = metric["value"]
            print(f"  {metric['name']:60s} {100 * value:.1f}%" if isinstance(value, float) and value <= 1 else
                  f"  {metric['name']:60s} {value}")
        print(f"\ntry it: agdm purify --sample  (a held-out MNIST test digit: {info['sample_image']})")
        return EXIT_OK


# The card's block that `benchmarks/campaign.py` writes: where the headline campaign stands (its first line).
CAMPAIGN_STATUS_START, CAMPAIGN_STATUS_END = "<!-- campaign-status:start -->", "<!-- campaign-status:end -->"


def campaign_status(text: str) -> str | None:
    """The first line of the card's campaign-status block (the headline, or "not yet measured ..."), or None."""
    if CAMPAIGN_STATUS_START not in text or CAMPAIGN_STATUS_END not in text:
        return None
    block = text.split(CAMPAIGN_STATUS_START, 1)[1].split(CAMPAIGN_STATUS_END, 1)[0].strip()
    return block.splitlines()[0] if block else None


def pipeline_info(pipe, folder: Path | None) -> dict:
    from .. import __version__
    from ..default_pipeline import sample_image_path
    from ..hub import PURIFICATION_CONFIG_KEYS

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
            "components": components, "card_results": None, "campaign_status": None,
            "sample_image": str(sample_image_path())}
    # The effective t*: the timestep the input is diffused to, and the reverse process's timesteps.
    settings = pipe.resolve_settings()
    info["purification_defaults"]["effective_t_star"] = (
        f"{settings.first_timestep} of {settings.num_train_timesteps} (timesteps "
        f"{', '.join(map(str, settings.timesteps))})")
    if folder is not None and (folder / "README.md").is_file():
        from huggingface_hub import ModelCard

        card = ModelCard.load(folder / "README.md")
        index = card.data.to_dict().get("model-index") or []
        info["card_results"] = [m for entry in index for result in entry.get("results", [])
                                for m in result.get("metrics", [])]
        info["campaign_status"] = campaign_status(card.text)
    return info


