"""Command line of one training run (single, mtl or finetune stage); the loop itself is ``transfer.training.loop``.

    python -m transfer.train --tasks chemprot ddi2013-type --stage mtl --profile quick
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from transfer import __version__
from transfer.data.tasks import TaskTable, load_task_table, locate_tasks
from transfer.experiment.config import DEFAULT_MODEL, STAGES, RunSpec, data_fingerprints, profile_with_overrides
from transfer.experiment.store import write_json_atomic, write_result
from transfer.training.loop import quiet_transformers, train


def build_parser(table: TaskTable) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transfer.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, choices=sorted(table.tasks), metavar="TASK",
                        help=f"tasks to train jointly (one head each); known: {', '.join(sorted(table.tasks))}")
    parser.add_argument("--stage", choices=STAGES, default="single",
                        help="single: one task; mtl: multi-task refinement; finetune: start from --parent's encoder")
    parser.add_argument("--domain", choices=sorted(table.domains), default=None,
                        help="whose data folder to read (default: the tasks' home domain)")
    parser.add_argument("--profile", default="quick", help="profile name in experiments/ or a .toml path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile value, e.g. --set epochs=3 --set max_train_examples=none")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="encoder: a local path or Hugging Face id; 'minilm' is the bundled all-MiniLM-L6-v2")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's first seed)")
    parser.add_argument("--data-dir", default=None, help="data directory (else $TRANSFER_DATA_DIR, else ./data)")
    parser.add_argument("--task-file", action="append", default=[], help="extra task table (TOML) to load")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<run id>)")
    parser.add_argument("--parent", default=None, help="finetune: folder of the mtl run to start from")
    parser.add_argument("--save-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="save the encoder for a later finetune (default: on for mtl runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False,
                        help="log lines instead of a live progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task-file", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    table = load_task_table(known.task_file)
    args = build_parser(table).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.quiet else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    profile = profile_with_overrides(args.profile, args.overrides)
    paths = locate_tasks(table, args.tasks, args.domain, args.data_dir)
    parent = _parent_id(args.parent) if args.parent else None
    save_encoder = args.stage == "mtl" if args.save_encoder is None else args.save_encoder
    spec = RunSpec(tasks=tuple(args.tasks), stage=args.stage, profile=profile,
                   seed=profile.seeds[0] if args.seed is None else args.seed, model=args.model,
                   domain=_domain_name(table, args.tasks, args.domain), parent=parent,
                   data_fingerprints=data_fingerprints(paths), code_version=__version__, save_encoder=save_encoder)
    out = Path(args.out or Path("runs") / spec.run_id)
    from transfer.experiment.progress import LogReporter, RichReporter

    reporter = LogReporter() if args.quiet else RichReporter()
    result = train(spec, data_dir=args.data_dir, device=args.device, reporter=reporter, table=table,
                   parent_dir=Path(args.parent) if args.parent else None, encoder_dir=out / "encoder")
    write_json_atomic(out / "spec.json", spec.to_dict())
    written = write_result(result, out)
    print(f"results written to {out}/ ({', '.join(p.name for p in written)})")
    return 0


def _domain_name(table: TaskTable, tasks: list[str], domain: str | None) -> str | None:
    found = table.domain_of(tasks, domain)
    return found.name if found else None


def _parent_id(folder: str) -> str:
    spec_file = Path(folder) / "spec.json"
    if spec_file.is_file():
        from transfer.experiment.config import run_spec_from_dict

        return run_spec_from_dict(json.loads(spec_file.read_text())).run_id
    return str(Path(folder).resolve())


if __name__ == "__main__":
    raise SystemExit(main())
