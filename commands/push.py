"""`imagegen-push DIR REPO_ID`: upload a saved model or pipeline directory in one commit."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainkit.config import console_script
from trainkit.hub import CONFIG_NAME, push_folder_to_hub


def push_main(argv: list[str] | None = None) -> str:
    """`imagegen-push DIR REPO_ID`: upload a saved model or pipeline directory in one commit."""
    parser = argparse.ArgumentParser(prog="imagegen-push", description=push_main.__doc__.split(": ", 1)[1])
    parser.add_argument("directory", help="a directory written by save_pretrained")
    parser.add_argument("repo_id", help="owner/name on the hub (created if needed)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args(argv)
    if not (Path(args.directory) / CONFIG_NAME).is_file() and not any(Path(args.directory).glob("*/" + CONFIG_NAME)):
        parser.error(f"{args.directory!r} holds no {CONFIG_NAME}: it is not a saved model directory")
    url = push_folder_to_hub(args.directory, args.repo_id, private=args.private, commit_message=args.message)
    print(url)
    return url


push_cli = console_script(push_main)


if __name__ == "__main__":
    push_main()
