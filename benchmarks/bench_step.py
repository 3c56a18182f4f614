"""Where a training step's time goes, without a profiler: the step with one piece taken out at a time.

    python benchmarks/bench_step.py                                   # batch 32 x 81, torch's thread count
    python benchmarks/bench_step.py --lengths 57 81 --repeats 30 --out benchmarks/results/step-ablation.json

``torch.profiler`` attributes time op by op, but its per-op overhead moves the shares (on the AMX Xeon one
profiled step gave the GELU forward 10.8% of the step's self time, another under 3%) and it does not see NumPy,
where the dropout masks are drawn, at all. This script times the step transfer's loop takes on a sentence-level task (the lean forward,
bf16 computed natively where the CPU runs it, else fp32; cross-entropy; backward; ``clip_grad_norm_``; fused
AdamW), split into forward, backward, clipping and optimizer, for these variants, each a model of its own:

* ``full``: the step as the loop runs it;
* ``no_dropout``: every dropout probability 0 (the masks and their multiplies gone);
* ``fixed_masks``: each mask shape drawn once and reused (the drawing gone, the multiplies kept);
* ``no_activation``: the feed-forward activation replaced by the identity (GELU forward and backward gone);
* ``frozen_word_embeddings``: the word-embedding matrix not trained (its gradient, its share of clipping and its
  AdamW update gone; 30522 x 384 values for MiniLM, more than the rest of the encoder).

What a piece costs is ``full`` minus the variant without it: the median, over the timed rounds, of the full step
less the variant's step of the same round and width. Every variant but ``full`` computes something else,
so the table attributes time; it proposes nothing. The variants take turns step by step on the same fixed batches
(``--lengths`` wide, one row per batch at full width, the others shorter), in a new random order each round, so a
change in the machine's speed falls on all of them alike and none is always the step after another model's; ``--warmup`` steps of each come first, untimed. The machine's load is checked over
the timed part as bench_train does.

After the timed rounds, ``--onednn-steps`` more steps of ``full`` at each width run with oneDNN's execution log on
(``benchlib.onednn``): the milliseconds its kernels (the bf16 matmuls above all) took in each part, against the
part's wall time. What is not inside them is everything the step does around the matmuls, the part any speed-up
outside the kernels can reach.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchlib.machine import LoadCheck, machine_info  # noqa: E402
from benchlib.onednn import OneDnnLog  # noqa: E402
from benchlib.report import report_console, write_report  # noqa: E402
from benchlib.steps import fixed_batches, step_parser  # noqa: E402

VARIANTS = ("full", "no_dropout", "fixed_masks", "no_activation", "frozen_word_embeddings")
PARTS = ("forward", "backward", "clip", "optimizer")
TASK = "chemprot"  # any sentence-level task of the table: only its label count matters here


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python benchmarks/bench_step.py", __doc__, VARIANTS, length=81, repeats=20, prefix="step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant and length first")
    parser.add_argument("--onednn-steps", type=int, default=3,
                        help="steps of full per length, after the timed ones, whose oneDNN kernels are summed (0: none)")
    return parser


class _FixedMasks:
    """A mask source that draws each (shape, p, dtype) once and hands out that mask ever after."""

    def __init__(self, source):
        self.source, self.masks = source, {}

    def scaled_mask(self, shape, p, dtype):
        key = (tuple(shape), p, dtype)
        if key not in self.masks:
            self.masks[key] = self.source.scaled_mask(shape, p, dtype)
        return self.masks[key]


def build_variant(name: str, model_name: str, task, native: bool):
    """(model, optimizer) for one variant, from the same pretrained weights."""
    import torch

    from transfer.training.masks import MaskSource
    from transfer.training.loop import build_optimizer
    from transfer.training.model import MultiTaskModel

    model = MultiTaskModel.from_pretrained(model_name, [task])
    model.use_fast_encoder(MaskSource(0), torch.bfloat16 if native else None)
    fast = model.fast
    if name == "no_dropout":
        fast.hidden_dropout = fast.attention_dropout = 0.0
        for head in model.heads.values():
            head.dropout.p = 0.0
    elif name == "fixed_masks":
        fixed = _FixedMasks(fast.source)
        fast.source = fixed
        for head in model.heads.values():
            head.dropout.source = fixed
    elif name == "no_activation":
        fast.activation = lambda x: x
    elif name == "frozen_word_embeddings":
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    model.train()
    return model, build_optimizer(model, "adamw", 5e-5, 0.01, torch.device("cpu"))


def make_batches(batch_size: int, lengths: list[int], vocab: int, labels: int) -> dict:
    """The fixed batches of ``bench_compile.py``, with token types and a label per row."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return {length: {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                     "targets": torch.randint(0, labels, (batch_size,), generator=generator)}
            for length, (ids, mask) in fixed_batches(batch_size, lengths, vocab).items()}


def step_parts(model, optimizer, batch: dict) -> tuple:
    """One step of the loop's arithmetic as its four parts (forward, backward, clipping, optimizer), to call in turn."""
    import torch

    state = {}

    def forward():
        state["loss"] = model.loss(TASK, batch)

    def optimize():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return (forward, lambda: state.pop("loss").backward(),
            lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True), optimize)


def timed_step(model, optimizer, batch: dict) -> list[float]:
    """One step; the seconds of its forward, backward, clipping and optimizer parts."""
    marks = [time.perf_counter()]
    for part in step_parts(model, optimizer, batch):
        part()
        marks.append(time.perf_counter())
    return [after - before for before, after in zip(marks, marks[1:])]


def onednn_step(model, optimizer, batch: dict) -> list[tuple[float, dict]]:
    """One step, each part watched by oneDNN's log: (seconds, what oneDNN executed) per part."""
    watched = []
    for part in step_parts(model, optimizer, batch):
        with OneDnnLog() as log:
            start = time.perf_counter()
            part()
            seconds = time.perf_counter() - start
        watched.append((seconds, log.result))
    return watched


def summarise_onednn(steps: list[list[tuple[float, dict]]]) -> dict:
    """Per part and for the step: wall and in-kernel milliseconds, means over the watched steps, kernels by kind."""
    def mean(values):
        return round(1e3 * sum(values) / len(steps), 2)

    parts = {}
    for i, part in enumerate(PARTS):
        kinds = sorted({kind for step in steps for kind in step[i][1]["by_kind"]})
        parts[part] = {"wall_ms": mean([step[i][0] for step in steps]),
                       "onednn_ms": mean([step[i][1]["ms"] / 1e3 for step in steps]),
                       "by_kind_ms": {k: mean([step[i][1]["by_kind"].get(k, 0.0) / 1e3 for step in steps])
                                      for k in kinds},
                       "executions": sum(step[i][1]["count"] for step in steps) // len(steps)}
    wall = round(sum(p["wall_ms"] for p in parts.values()), 2)
    inside = round(sum(p["onednn_ms"] for p in parts.values()), 2)
    flops = sum(part[1]["matmul_flops"] for step in steps for part in step) / len(steps)
    matmul_ms = sum(p["by_kind_ms"].get("matmul", 0.0) for p in parts.values())
    return {"steps": len(steps), "wall_ms": wall, "onednn_ms": inside,
            "onednn_share": round(inside / wall, 4) if wall else None,
            "matmul_gflop": round(flops / 1e9, 3),
            "matmul_gflops_per_s": round(flops / 1e6 / matmul_ms, 1) if matmul_ms else None, "parts": parts}


def run(args: argparse.Namespace) -> dict:
    import torch

    from transfer.data.tasks import load_task_table
    from transfer.training.device import resolve_precision
    from transfer.training.host_memory import keep_freed_memory
    from transfer.training.kernel_cache import size_primitive_cache

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "full" not in variants:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}" if unknown else "--variants must include full")
    if args.repeats < 1 or args.warmup < 0 or args.onednn_steps < 0:
        raise SystemExit("--repeats must be at least 1, --warmup and --onednn-steps at least 0")
    allocator = keep_freed_memory()  # as a training run has it
    kernel_cache = size_primitive_cache()
    if args.threads:
        torch.set_num_threads(args.threads)
    native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    task = load_task_table().task(TASK)
    built = {name: build_variant(name, args.model, task, native) for name in variants}
    vocab = built["full"][0].encoder.config.vocab_size
    batches = make_batches(args.batch_size, args.lengths, vocab, task.num_labels)
    for name in variants:
        for length in args.lengths:
            for _ in range(args.warmup):
                timed_step(*built[name], batches[length])
    seconds = {name: [] for name in variants}
    order = random.Random(0)
    with LoadCheck("timed steps", threshold_cores=args.quiet_cores) as check:
        for _ in range(args.repeats):
            for length in args.lengths:
                # a fresh order each round: the step that follows another model's (whose weights and activations
                # pushed its own out of the caches) pays for it, and no variant should always be that step
                for name in order.sample(variants, len(variants)):
                    seconds[name].append(timed_step(*built[name], batches[length]))
    # after the timed rounds, so that writing the log costs them nothing
    watched = [onednn_step(*built["full"], batches[length]) for length in args.lengths
               for _ in range(args.onednn_steps)]
    results = {}
    for name, steps in seconds.items():
        medians = [statistics.median(step[i] for step in steps) for i in range(len(PARTS))]
        total = statistics.median(sum(step) for step in steps)
        results[name] = {**{f"{part}_ms": round(1e3 * m, 2) for part, m in zip(PARTS, medians)},
                         "step_ms": round(1e3 * total, 2), "steps": len(steps)}
    full = [sum(step) for step in seconds["full"]]
    for name, item in results.items():
        # paired: each step of the variant against the full step of the same round and width, which ran just
        # before it, so what the machine's speed does between rounds cancels
        saved = statistics.median(f - sum(step) for f, step in zip(full, seconds[name]))
        item["saved_ms"] = round(1e3 * saved, 2)
        item["saved_share"] = round(saved / statistics.median(full), 4)
    meta = machine_info(torch.device("cpu"))
    meta.update(quiet=check.result["quiet"], host_allocator=allocator, onednn_primitive_cache=kernel_cache,
                args=dict(vars(args)))
    return {"meta": meta, "load": check.result, "compute": "bf16 native" if native else "fp32",
            "batch_size": args.batch_size, "lengths": args.lengths, "variants": results,
            "onednn": summarise_onednn(watched) if watched else None}


def render(report: dict, console=None) -> None:
    from rich.table import Table

    console = console or report_console()
    table = Table(title=f"one training step, batch {report['batch_size']} x {report['lengths']}, "
                        f"{report['compute']}, {report['meta']['torch_threads']} threads (medians, ms)")
    for column in ("variant", *PARTS, "step", "full minus this", "share"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, item in report["variants"].items():
        table.add_row(name, *(f"{item[f'{part}_ms']:.1f}" for part in PARTS), f"{item['step_ms']:.1f}",
                      "" if name == "full" else f"{item['saved_ms']:.1f}",
                      "" if name == "full" else f"{100 * item['saved_share']:.1f}%")
    console.print(table)
    inside = report.get("onednn")
    if inside:
        kinds = defaultdict(float)
        for part in inside["parts"].values():
            for kind, ms in part["by_kind_ms"].items():
                kinds[kind] += ms
        split = ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]))
        console.print(f"inside oneDNN kernels (full, {inside['steps']} logged steps): {inside['onednn_ms']:.1f} of "
                      f"{inside['wall_ms']:.1f} ms a step ({100 * (inside['onednn_share'] or 0):.0f}%)"
                      + (f": {split}" if split else "; none ran (this CPU's matmuls do not go through oneDNN)")
                      + (f"; matmuls {inside['matmul_gflop']:.1f} GFLOP a step at {inside['matmul_gflops_per_s']:,.0f}"
                         " GFLOP/s inside the kernels" if inside["matmul_gflops_per_s"] else "")
                      + "; by part " + ", ".join(f"{name} {p['onednn_ms']:.1f}/{p['wall_ms']:.1f}"
                                                for name, p in inside["parts"].items()))
    if report["meta"].get("quiet") is False:
        console.print("warning: the machine was not quiet while the steps were timed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return write_report(run(args), args.out, "step", render)


if __name__ == "__main__":
    raise SystemExit(main())
