"""Command-line entry points of the pipelines: `imagegen-generate` and `imagegen-assemble`.

    imagegen-generate PIPELINE_PATH_OR_REPO --per-class 8 --seed 0 --output grid.png
    imagegen-generate PIPELINE_PATH_OR_REPO --num-images 100 --class-labels Sneaker --output-dir samples/
    imagegen-assemble --tokenizer runs/tokenizer_vq/final --prior runs/prior/final --output my_pipeline

Both also run as `python -m commands.pipeline_cli generate ...` and `python -m commands.pipeline_cli assemble ...`.
Pushing a saved pipeline directory is `imagegen-push DIR OWNER/NAME` (one commit).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from trainkit.config import console_script
from trainkit.files import CheckpointError
from trainkit.images import save_grid


def _label(text: str, class_names: list[str] | None) -> int | str:
    """A command-line class label: a class name if the pipeline knows it, else an integer id."""
    if class_names and text in class_names:
        return text
    try:
        return int(text)
    except ValueError:
        return text  # the pipeline reports the unknown name and lists the known ones


def _file_label(label: int | str, class_names: list[str] | None) -> str:
    name = class_names[label] if isinstance(label, int) and class_names and 0 <= label < len(class_names) else label
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "class"


def _generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegen-generate",
        description="Sample images from a saved pipeline (a directory or a hub repo id) into one grid PNG "
                    "(--output) or a folder of PNGs (--output-dir).")
    parser.add_argument("pipeline", help="a pipeline directory or hub repo id (owner/name)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="number of images (default: one per class label, or 1)")
    parser.add_argument("--class-labels", nargs="+", default=None, metavar="LABEL",
                        help="class names or ids: one per image, or one for all (default: unconditional)")
    parser.add_argument("--per-class", type=int, default=None, metavar="K",
                        help="a class grid: K images for each class (or each of --class-labels), one row per "
                             "class; K x K images for an unconditional pipeline")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance (default: the pipeline's, when classes are given)")
    parser.add_argument("--guidance-schedule", choices=("constant", "linear"), default=None,
                        help="guidance over the grid's codes: constant, or rising linearly from 1 to --guidance-scale "
                             "(default: the pipeline's)")
    parser.add_argument("--autoguidance-scale", type=float, default=None,
                        help="steer away from the prior's guide, a weaker prior saved with it "
                           "(0: off; default: the pipeline's)")
    parser.add_argument("--temperature", type=float, default=None, help="default: the pipeline's (0: greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="default: the pipeline's (0: no top-k)")
    parser.add_argument("--top-p", type=float, default=None, help="default: the pipeline's (1: no top-p)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same images (default 0)")
    parser.add_argument("--batch-size", type=int, default=None, help="images sampled together (default: all)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                        help="the prior's dtype; auto: bfloat16 where the device has bf16 matrix units "
                             "(a GPU, or a CPU with AVX512-BF16 or AMX), else float32")
    parser.add_argument("--nrow", type=int, default=None, help="grid columns (default: --per-class, else 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="write one grid PNG here")
    out.add_argument("--output-dir", help="write one PNG per image into this folder")
    return parser


def _sample(pipe, args: argparse.Namespace):
    """The images `args` ask of `pipe` `[N, C, H, W]` in [0, 1], and the class label of each (None: unconditional)."""
    from stage2_prior import SamplingOptions

    labels = None if args.class_labels is None else [_label(t, pipe.class_names) for t in args.class_labels]
    options = SamplingOptions(guidance_scale=args.guidance_scale, guidance_schedule=args.guidance_schedule,
                              autoguidance_scale=args.autoguidance_scale, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
    progress = not args.no_progress
    if args.per_class is not None:
        images = pipe.sample_grid(per_class=args.per_class, class_labels=labels, options=options, progress=progress)
        if pipe.conditional:
            classes = labels if labels is not None else list(range(pipe.num_classes))
            labels = [c for c in classes for _ in range(args.per_class)]
        return images, labels
    one_for_all = labels is not None and len(labels) == 1
    images = pipe.generate(num_images=args.num_images, class_labels=labels[0] if one_for_all else labels,
                           output_type="pt", progress=progress, options=options)
    return images, (labels * images.shape[0] if one_for_all else labels)


def _write_images(images, labels: list | None, class_names: list[str] | None, folder: Path) -> list[Path]:
    """One PNG per image in `folder`, named by its index and, when known, its class."""
    from pipelines.pipeline import format_images

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, image in enumerate(format_images(images, "pil")):
        suffix = f"_{_file_label(labels[i], class_names)}" if labels is not None else ""
        written.append(folder / f"{i:05d}{suffix}.png")
        image.save(written[-1])
    return written


def generate_main(argv: list[str] | None = None) -> list[Path]:
    """`imagegen-generate`: sample images from a pipeline into a grid PNG or a folder of PNGs."""
    parser = _generate_parser()
    args = parser.parse_args(argv)
    if args.per_class is not None and args.num_images is not None:
        parser.error("--per-class sets the number of images: drop --num-images")

    from pipelines.pipeline import Pipeline

    try:
        pipe = Pipeline.from_pretrained(args.pipeline, revision=args.revision, device=args.device,
                                        torch_dtype=args.dtype)
        images, labels = _sample(pipe, args)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        parser.exit(2, f"imagegen-generate: error: {err}\n")

    if args.output:
        nrow = args.nrow or args.per_class or min(8, images.shape[0])
        written = [save_grid(images * 2 - 1, args.output, nrow=nrow)]
    else:
        written = _write_images(images, labels, pipe.class_names, Path(args.output_dir))
    print(f"wrote {len(images)} image(s) to {args.output or args.output_dir}")
    return written


def assemble_main(argv: list[str] | None = None) -> Path:
    """`imagegen-assemble`: build a pipeline directory from a saved tokenizer and prior."""
    parser = argparse.ArgumentParser(
        prog="imagegen-assemble",
        description="Check that a tokenizer and a prior fit and save them as one pipeline directory "
                    "(manifest, tokenizer/, prior/, model card, sample grid).")
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer directory or hub repo id")
    parser.add_argument("--prior", required=True, help="a saved prior directory or hub repo id")
    parser.add_argument("--output", required=True, help="the pipeline directory to write")
    parser.add_argument("--eval-report", default=None, help="an evaluation report JSON for the model card")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="the pipeline's default guidance scale (default: from the prior's training run, "
                             "else 2.0 for a class-conditional prior)")
    parser.add_argument("--samples-per-class", type=int, default=8, help="columns of the card's sample grid")
    parser.add_argument("--no-samples", action="store_true", help="no sample grid in the card")
    parser.add_argument("--repo-id", default=None, help="the hub id to show in the card's usage snippet")
    args = parser.parse_args(argv)

    from pipelines.pipeline import Pipeline

    try:
        pipe = Pipeline.from_components(args.tokenizer, args.prior, default_guidance_scale=args.guidance_scale)
        path = pipe.save_pretrained(args.output, eval_report=args.eval_report, samples=not args.no_samples,
                                    samples_per_class=args.samples_per_class, repo_id=args.repo_id)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as err:
        parser.exit(2, f"imagegen-assemble: error: {err}\n")
    print(f"pipeline saved to {path}")
    return path


COMMANDS = {"generate": generate_main, "assemble": assemble_main}


def main(argv: list[str] | None = None):
    """`python -m commands.pipeline_cli {generate,assemble} ...`"""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m commands.pipeline_cli {{{','.join(COMMANDS)}}} ...  (-h after a command for its options)")
    return COMMANDS[argv[0]](argv[1:])


generate_cli = console_script(generate_main)
assemble_cli = console_script(assemble_main)


if __name__ == "__main__":
    main()
