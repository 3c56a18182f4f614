"""What the step-timing scripts (``bench_compile.py``, ``bench_step.py``) share: their common options and the
fixed batches they time."""

from __future__ import annotations

import argparse

from benchlib.machine import QUIET_CORES


def step_parser(prog: str, doc: str, variants: tuple[str, ...], *, length: int, repeats: int,
                prefix: str) -> argparse.ArgumentParser:
    """The options every step-timing script takes; a script adds its own after these."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="minilm", help="a BERT-architecture encoder ('minilm' or a local path)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[length], help="batch widths to time (tokens)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed steps per variant and length")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variants", default=",".join(variants), help=f"comma-separated subset of {','.join(variants)}")
    parser.add_argument("--quiet-cores", type=float, default=QUIET_CORES)
    parser.add_argument("--out", default=None, help=f"JSON file (default: benchmarks/results/{prefix}-<time>.json)")
    return parser


def fixed_batches(batch_size: int, lengths: list[int], vocab: int) -> dict:
    """{width: (input ids, attention mask)}: one row at the full width, the others between half of it and all."""
    import torch

    generator = torch.Generator().manual_seed(0)
    batches = {}
    for length in lengths:
        ids = torch.randint(1000, vocab, (batch_size, length), generator=generator)
        real = torch.randint(max(2, length // 2), length + 1, (batch_size,), generator=generator)
        real[0] = length  # the batch is as wide as its longest row
        mask = (torch.arange(length)[None] < real[:, None]).long()
        batches[length] = (ids, mask)
    return batches
