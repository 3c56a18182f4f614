"""Does ``torch.compile`` of the lean forward's layers pay on this CPU? Eager against compiled, forward + backward.

    python benchmarks/bench_compile.py                          # batch 32 x 60, torch's thread count
    python benchmarks/bench_compile.py --threads 1 --lengths 40 60 90 --out benchmarks/results/compile.json

The eager variant is transfer's training forward as the loop runs it (``FastBertEncoder``, bf16 end to end where
the CPU runs bf16 natively, else the same fused layout in fp32; explicit attention; dropout masks from a ``MaskSource``). The compiled
variants run the same layer arithmetic as one function under ``torch.compile`` (Inductor), with the layer's three
dropout masks drawn outside it, from an identically seeded source in the same order (NumPy draws cannot be
traced), so both variants compute the same function on the same masks:

* ``compiled_dynamic``: ``dynamic=True``, one graph for every batch shape (what length-grouped batches, whose
  width changes from batch to batch, would need to avoid a compilation per width);
* ``compiled_static``: ``dynamic=False``, a graph per shape (the compilation cost repeats for every new width);
* ``compiled_autotune``: ``dynamic=False``, ``mode="max-autotune-no-cudagraphs"`` (Inductor's own GEMM templates
  where it finds them faster, AMX micro-kernels on CPUs that have them).

One step is the encoder's forward on a batch (the last layer for [CLS] only, as for a sentence-level head), a
scalar loss and the backward pass into the fp32 weights. Each variant is compiled and warmed on every length
first (compile seconds recorded), then the variants take turns, ``--repeats`` steps each per length, so a change
in the machine's speed falls on all of them alike. Reported per variant: the median and best step seconds and
the eager median over the variant's (``speedup``; above 1 the variant is faster), the compile seconds, and the
largest difference of its output from the eager output on the first batch (bf16 rounding, not a different
function). The machine's load is checked over the timed part as bench_train does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchlib.machine import LoadCheck, machine_info  # noqa: E402
from benchlib.report import report_console, write_report  # noqa: E402
from benchlib.steps import fixed_batches, step_parser  # noqa: E402

VARIANTS = ("eager", "compiled_dynamic", "compiled_static", "compiled_autotune")


def build_parser() -> argparse.ArgumentParser:
    return step_parser("python benchmarks/bench_compile.py", __doc__, VARIANTS, length=60, repeats=10, prefix="compile")


def layer_math(x, keep, attn_mask, hidden_mask, out_mask, w: dict, heads: int, eps: float, cls_only: bool):
    """One lean layer (``FastBertEncoder._layer`` on the fused native weights) with its dropout masks given."""
    import torch
    import torch.nn.functional as F

    batch, length, hidden = x.shape

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, hidden // heads).transpose(1, 2)

    query_in = x[:, :1] if cls_only else x
    if cls_only:
        q = split(F.linear(query_in, w["attention.self.query.weight"], w["attention.self.query.bias"]))
        k, v = (split(t) for t in F.linear(x, w["attention.self.kv.weight"], w["attention.self.kv.bias"]).split(hidden, -1))
    else:
        q, k, v = (split(t) for t in F.linear(x, w["attention.self.qkv.weight"], w["attention.self.qkv.bias"]).split(hidden, -1))
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + keep, dim=-1) * attn_mask
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, query_in.shape[1], hidden)
    attended = F.linear(context, w["attention.output.dense.weight"], w["attention.output.dense.bias"]) * hidden_mask
    x = F.layer_norm(attended + query_in, (hidden,), w["attention.output.LayerNorm.weight"],
                     w["attention.output.LayerNorm.bias"], eps)
    inner = F.gelu(F.linear(x, w["intermediate.dense.weight"], w["intermediate.dense.bias"]))
    out = F.linear(inner, w["output.dense.weight"], w["output.dense.bias"]) * out_mask
    return F.layer_norm(out + x, (hidden,), w["output.LayerNorm.weight"], w["output.LayerNorm.bias"], eps)


def compiled_encoder(encoder, source, dtype, layer_fn):
    """A ``FastBertEncoder`` whose layers call ``layer_fn`` with masks drawn from ``source`` in the eager order."""
    import torch

    from transfer.training.fast_bert import FastBertEncoder

    class Compiled(FastBertEncoder):
        def _layer(self, w, prefix, x, keep, training, cls_only):
            batch, length, hidden = x.shape
            rows = 1 if cls_only else length
            # the eager layer draws attention probabilities' mask, then the attention output's, then the FFN's
            attn = self.source.scaled_mask(torch.Size((batch, self.heads, rows, length)), self.attention_dropout, x.dtype)
            hidden_mask = self.source.scaled_mask(torch.Size((batch, rows, hidden)), self.hidden_dropout, x.dtype)
            out_mask = self.source.scaled_mask(torch.Size((batch, rows, hidden)), self.hidden_dropout, x.dtype)
            weights = {name[len(prefix):]: t for name, t in w.items() if name.startswith(prefix)}
            return layer_fn(x, keep, attn, hidden_mask, out_mask, weights, self.heads, self.eps, cls_only)

    return Compiled(encoder, source, dtype)


def run(args: argparse.Namespace) -> dict:
    import torch

    from transfer.experiment.encoders import load_encoder
    from transfer.training.device import resolve_precision
    from transfer.training.masks import MaskSource

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "eager" not in variants:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}" if unknown else "--variants must include eager")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    # without native bf16 both sides run the fused layout in fp32 (the loop's own fp32 path keeps q, k, v apart)
    dtype = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32
    encoder = load_encoder(args.model)
    encoder.train()
    params = list(encoder.parameters())
    batches = fixed_batches(args.batch_size, args.lengths, encoder.config.vocab_size)
    from transfer.training.fast_bert import FastBertEncoder

    builders = {
        "eager": lambda source: FastBertEncoder(encoder, source, dtype),
        "compiled_dynamic": lambda source: compiled_encoder(encoder, source, dtype, torch.compile(layer_math, dynamic=True)),
        "compiled_static": lambda source: compiled_encoder(encoder, source, dtype, torch.compile(layer_math, dynamic=False)),
        "compiled_autotune": lambda source: compiled_encoder(
            encoder, source, dtype, torch.compile(layer_math, dynamic=False, mode="max-autotune-no-cudagraphs")),
    }

    def step(forward, ids, mask) -> torch.Tensor:
        out = forward(ids, mask, cls_only=True)
        out.float().square().mean().backward()
        for p in params:
            p.grad = None
        return out.detach()

    # a static graph per (width, [CLS]-only) pair: past dynamo's default limit of 8 it would run the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.lengths) + 8)
    forwards, results, first_outputs = {}, {}, {}
    for name in variants:
        torch._dynamo.reset()
        forward = builders[name](MaskSource(0))
        started = time.perf_counter()
        first_outputs[name] = step(forward, *batches[args.lengths[0]])
        for length in args.lengths[1:]:
            step(forward, *batches[length])
        results[name] = {"compile_and_first_steps_seconds": round(time.perf_counter() - started, 2), "seconds": []}
        forwards[name] = forward
    for name in variants:  # the same masks for every variant's first batch: compare what they computed
        diff = (first_outputs[name].float() - first_outputs["eager"].float()).abs().max().item()
        results[name]["max_abs_diff_vs_eager"] = diff
    with LoadCheck("timed steps", threshold_cores=args.quiet_cores) as check:
        for _ in range(args.repeats):
            for length in args.lengths:
                for name in variants:
                    ids, mask = batches[length]
                    begun = time.perf_counter()
                    step(forwards[name], ids, mask)
                    results[name]["seconds"].append(time.perf_counter() - begun)
    eager_median = statistics.median(results["eager"]["seconds"])
    for item in results.values():
        seconds = item.pop("seconds")
        item.update(median_step_seconds=round(statistics.median(seconds), 5), best_step_seconds=round(min(seconds), 5),
                    speedup=round(eager_median / statistics.median(seconds), 3), steps=len(seconds))
    meta = machine_info(device)
    meta.update(quiet=check.result["quiet"], args={k: v for k, v in vars(args).items()})
    return {"meta": meta, "load": check.result, "compute_dtype": str(dtype).replace("torch.", ""),
            "batch_size": args.batch_size, "lengths": args.lengths, "variants": results}


def render(report: dict, console=None) -> None:
    from rich.table import Table

    console = console or report_console()
    table = Table(title=f"lean forward + backward, batch {report['batch_size']} x {report['lengths']}, "
                        f"{report['compute_dtype']}, {report['meta']['torch_threads']} threads")
    for column in ("variant", "median s", "best s", "speed-up", "compile + first s", "max |diff|"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, item in report["variants"].items():
        table.add_row(name, f"{item['median_step_seconds']:.4f}", f"{item['best_step_seconds']:.4f}",
                      f"{item['speedup']:.2f}x", f"{item['compile_and_first_steps_seconds']:.1f}",
                      f"{item['max_abs_diff_vs_eager']:.2g}")
    console.print(table)
    if report["meta"].get("quiet") is False:
        console.print("warning: the machine was not quiet while the steps were timed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return write_report(run(args), args.out, "compile", render)


if __name__ == "__main__":
    raise SystemExit(main())
