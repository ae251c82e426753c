"""`agdm push`: upload a pipeline folder with its model card to the Hub."""

import argparse
from pathlib import Path

from . import EXIT_OK, BaseAgdmCLICommand, add_pipeline_argument


class PushCommand(BaseAgdmCLICommand):
    name = "push"
    help = "upload a pipeline folder with its model card to the Hub"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Upload a saved pipeline (safetensors) and its README.md model card to a Hub repo; a folder "
                        "without a card gets one generated from the project's template.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_pipeline_argument(parser)
        parser.add_argument("--repo_id", required=True, help="e.g. your-name/agdm-mnist")
        parser.add_argument("--token", default=None)
        parser.add_argument("--private", action="store_true")
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        import shutil
        import tempfile

        from ..hub import make_model_card, push_folder_to_hub
        from ..pretrained import default_pipeline_path, load_pipeline

        args = self.args
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
        return EXIT_OK
