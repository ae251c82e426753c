"""`agdm push`: upload a pipeline folder with its model card to the Hub."""

import argparse
from pathlib import Path

from ..utils.flags import HelpFormatter
from . import EXIT_OK, BaseAgdmCLICommand, add_pipeline_argument, load_pipeline


class PushCommand(BaseAgdmCLICommand):
    name = "push"
    help = "upload a pipeline folder with its model card to the Hub"

    @classmethod
    def register_subcommand(cls, subparsers):
        parser = subparsers.add_parser(
            cls.name, help=cls.help,
            description="Upload a saved pipeline (safetensors) and its README.md model card to a Hub repo; a folder "
                        "without a card gets one generated from the project's template.",
            formatter_class=HelpFormatter, allow_abbrev=False)
        add_pipeline_argument(parser)
        parser.add_argument("--hub_model_id", required=True, help="the Hub repo to push to, e.g. your-name/agdm-mnist")
        parser.add_argument("--hub_token", default=None, help="a Hub token (default: the one `hf auth login` saved)")
        parser.add_argument("--hub_private_repo", "--private", dest="private", action=argparse.BooleanOptionalAction,
                            default=None,
                            help="create the repo private (default: the Hub's default; an existing repo keeps its "
                                 "visibility)")
        parser.add_argument("--commit_message", default="Upload AGDM purification pipeline",
                            help="the commit message on the Hub")
        parser.add_argument("--create_pr", action=argparse.BooleanOptionalAction, default=False,
                            help="open a pull request instead of committing to main")
        parser.set_defaults(func=cls)
        return parser

    def run(self) -> int:
        import shutil
        import tempfile

        from ..default_pipeline import default_pipeline_path
        from ..hub import make_model_card, push_folder_to_hub
        from ..utils.paths import check_model_source

        args = self.args
        folder = default_pipeline_path() if args.pipeline is None else Path(args.pipeline)
        check_model_source("--pipeline", folder, local_only=True)  # `agdm push` uploads a local folder
        if args.hub_model_id.count("/") > 1 or not args.hub_model_id.strip("/"):
            raise ValueError(f"--hub_model_id {args.hub_model_id!r} is not a repo id (name or owner/name).")
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / folder.name
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "*.bin", "*.pt"))
            if not (staged / "README.md").is_file():
                make_model_card(load_pipeline(str(folder)), args.hub_model_id).save(staged / "README.md")
            result = push_folder_to_hub(staged, args.hub_model_id, token=args.hub_token, private=args.private,
                                        commit_message=args.commit_message, create_pr=args.create_pr)
        print(f"pushed {folder} to {args.hub_model_id}: {result}")
        return EXIT_OK
