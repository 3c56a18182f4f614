"""Command line of one training run (single, mtl or finetune stage); the loop itself is ``transfer.training.loop``.

    python -m transfer.train --tasks chemprot ddi2013-type --stage mtl --profile quick

Everything the user supplies (flags, profile, ``--set`` values, task files, data, model, device, parent run) is
checked before training starts; a problem prints one line, ``error: <file>[, line N]: <what is wrong>``, and
exits with 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import torch

from transfer import __version__
from transfer.cli import add_common_flags, add_data_flags, add_profile_flags, command, positive_int, pre_parse_task_files
from transfer.data.tasks import TaskTable, load_task_table, locate_tasks
from transfer.errors import UsageError, UserError
from transfer.experiment.config import DEFAULT_MODEL, STAGES, RunSpec, data_fingerprints, profile_with_overrides
from transfer.experiment.run_folder import RunFolder
from transfer.training.loop import quiet_transformers, train
from transfer.experiment.encoders import check_max_length

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are ``UsageError``s, so they print as one ``error:`` line like every other."""

    def error(self, message: str):
        raise UsageError(f"{message} (see python -m transfer.train --help)")


def build_parser(table: TaskTable) -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m transfer.train", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, choices=sorted(table.tasks), metavar="TASK",
                        help=f"tasks to train jointly (one head each); known: {', '.join(sorted(table.tasks))}")
    parser.add_argument("--stage", choices=STAGES, default="single",
                        help="single: one task; mtl: multi-task refinement; finetune: start from --parent's encoder")
    parser.add_argument("--domain", choices=sorted(table.domains), default=None,
                        help="whose data folder to read (default: the tasks' home domain)")
    add_profile_flags(parser, DEFAULT_MODEL)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's first seed)")
    add_data_flags(parser)
    parser.add_argument("--out", default=None, help="output folder (default: runs/<run id>)")
    parser.add_argument("--parent", default=None, help="finetune: folder of the mtl run to start from")
    parser.add_argument("--save-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="save the encoder for a later finetune (default: on for mtl runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                        help="log lines instead of a live progress bar")
    add_common_flags(parser)
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    table = load_task_table(pre_parse_task_files(argv))
    args = build_parser(table).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.quiet else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    profile = profile_with_overrides(args.profile, args.overrides)
    if profile.precision == "fp16" and not args.device.startswith("cuda") and not (
            args.device == "auto" and torch.cuda.is_available()):
        raise UsageError(f"precision fp16 needs a CUDA device, and --device {args.device} is not one; use "
                         "--set precision=bf16 or fp32")
    paths = locate_tasks(table, args.tasks, args.domain, args.data_dir)
    parent = parent_run_id(args.parent, args.stage)
    check_max_length(args.model, profile.max_length)  # also: the model exists and can be loaded
    save_encoder = args.stage == "mtl" if args.save_encoder is None else args.save_encoder
    spec = RunSpec(tasks=tuple(args.tasks), stage=args.stage, profile=profile,
                   seed=profile.seeds[0] if args.seed is None else args.seed, model=args.model,
                   domain=_domain_name(table, args.tasks, args.domain), parent=parent,
                   data_fingerprints=data_fingerprints(paths), code_version=__version__, save_encoder=save_encoder)
    out = Path(args.out or Path("runs") / spec.run_id)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    from transfer.experiment.progress import LogReporter, RichReporter

    reporter = LogReporter() if args.quiet else RichReporter()
    result = train(spec, data_dir=args.data_dir, device=args.device, reporter=reporter, table=table,
                   parent_dir=Path(args.parent) if args.parent else None, encoder_dir=RunFolder(out).encoder_dir)
    RunFolder(out).write_spec(spec.to_dict(), spec.run_id)
    written = RunFolder(out).write_result(result)
    print(f"results written to {out}/ ({', '.join(p.name for p in written)})")
    return 0


def check_device(device: str) -> None:
    """``--device`` names a device this machine has."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is visible to torch; use --device cpu (or auto)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: the MPS backend is not available here; use --device cpu (or auto)")


def _domain_name(table: TaskTable, tasks: list[str], domain: str | None) -> str | None:
    found = table.domain_of(tasks, domain)
    return found.name if found else None


def parent_run_id(folder: str | None, stage: str) -> str | None:
    """The run id of ``--parent`` (a run folder of ``transfer.train`` or a grid store, with its encoder)."""
    if folder is None:
        return None
    if stage != "finetune":
        raise UsageError(f"--parent {folder}: only a finetune run starts from a parent (use --stage finetune)")
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--parent {folder}: folder does not exist (give the folder of the mtl run to start from)")
    spec_file = RunFolder(path).spec_file
    if not spec_file.is_file():
        raise UsageError(f"{spec_file}: missing; --parent takes a run folder written by transfer.train or "
                         "transfer.grid")
    if not (RunFolder(path).encoder_dir / "config.json").is_file():
        raise UsageError(f"--parent {folder}: has no saved encoder ({RunFolder(path).encoder_dir}); train the mtl run with "
                         "--save-encoder")
    from transfer.experiment.config import run_spec_from_dict

    try:
        return run_spec_from_dict(RunFolder(path).read_spec()).run_id  # without the run_id and roles beside it
    except UserError as exc:
        raise UsageError(f"{spec_file}: not a usable run spec ({exc})") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise UsageError(f"{spec_file}: not a run spec ({type(exc).__name__}: {exc}); is --parent a run folder?") from None


if __name__ == "__main__":
    raise SystemExit(main())
