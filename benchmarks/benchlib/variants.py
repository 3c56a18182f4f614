"""The benchmarked variants on a ``Workload``: training with the Hugging Face ``Trainer`` ((a), (b)) and with
transfer's loop ((c)), evaluation of both, and a ``torch.profiler`` view of one training step of transfer's
loop; each returns its numbers as a dict for the report."""

from __future__ import annotations

import inspect
import tempfile
import time
from unittest import mock

from benchlib.flops import Arch, BatchRecord
from benchlib.machine import PeakMemory, bf16_native, sync, utilisation
from benchlib.records import BatchRecorder, StepClock, record_from_mask, timed_summary
from benchlib.workload import (LEARNING_RATE, MAX_GRAD_NORM, SEED, SMALL_EVAL, WARMUP_RATIO, WEIGHT_DECAY,
                               Workload)

GEMM_OPS = ("addmm", "aten::mm", "bmm", "baddbmm", "matmul", "linear", "scaled_dot_product", "mkldnn")


# ----------------------------------------------------------------------------------------------- (a), (b): Trainer

def trainer_arguments(output_dir: str, *, steps: int, batch_size: int, precision: str, grouped: bool, device,
                      num_workers: int) -> tuple[object, dict]:
    """``TrainingArguments`` for one Trainer variant, spelled for the installed transformers (4.40 .. 5.x)."""
    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kwargs = dict(output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps, num_train_epochs=1,
                  learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear",
                  max_grad_norm=MAX_GRAD_NORM, seed=SEED, report_to="none", save_strategy="no",
                  logging_strategy="no", disable_tqdm=True, bf16=precision == "bf16",
                  dataloader_num_workers=num_workers, dataloader_pin_memory=device.type == "cuda")
    if num_workers and "dataloader_persistent_workers" in params:
        kwargs["dataloader_persistent_workers"] = True
    if "warmup_ratio" in params:
        kwargs["warmup_ratio"] = WARMUP_RATIO
    else:  # transformers 5: a float below 1 is a ratio of the total steps
        kwargs["warmup_steps"] = WARMUP_RATIO
    if "train_sampling_strategy" in params:
        kwargs["train_sampling_strategy"] = "group_by_length" if grouped else "random"
    else:
        kwargs["group_by_length"] = grouped
    if device.type == "cpu":
        kwargs["use_cpu" if "use_cpu" in params else "no_cuda"] = True
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    return TrainingArguments(**kwargs), kwargs


def hf_dataset(workload: Workload, padding) -> list[dict]:
    """The training sample tokenised the Trainer way (one dict per example, ``labels`` = class index)."""
    from transfer.training.kinds import kind_ops

    examples, task = workload.train_examples, workload.task
    text_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    encoded = workload.tokenizer([ex.text_a for ex in examples], text_b, truncation="longest_first",
                                 max_length=workload.max_length, padding=padding, return_token_type_ids=True)
    ops = kind_ops(task)
    keys = ("input_ids", "token_type_ids", "attention_mask")
    return [{**{k: encoded[k][i] for k in keys}, "labels": ops.encode(ex.label, task)} for i, ex in enumerate(examples)]


def run_trainer(workload: Workload, *, best: bool, peaks: dict) -> dict:
    """(a) ``best=False``: padding to max_length, fp32. (b) ``best=True``: dynamic padding, grouped, bf16."""
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, PrinterCallback, Trainer,
                              TrainerCallback, default_data_collator)

    device, arch = workload.device, workload.arch
    precision = "bf16" if best and bf16_native(device) else "fp32"
    num_workers = 2 if best and device.type == "cuda" else 0
    dataset = hf_dataset(workload, False if best else "max_length")
    collator = (DataCollatorWithPadding(workload.tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
                if best else default_data_collator)
    clock = StepClock(device, workload.skip, workload.steps)
    masks: list = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            memory.mark()

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    def record(module, args, kwargs):
        if module.training:
            masks.append(kwargs["attention_mask"].detach())

    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, memory:
        args, used = trainer_arguments(tmp, steps=workload.steps, batch_size=workload.batch_size, precision=precision,
                                       grouped=best, device=device, num_workers=num_workers)
        torch.manual_seed(SEED)
        model = AutoModelForSequenceClassification.from_pretrained(workload.model_path, num_labels=workload.task.num_labels)
        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=workload.tokenizer, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        hook.remove()
        optim = str(getattr(args.optim, "value", args.optim))
        del trainer, model
    batches = [record_from_mask(m, arch) for m in masks]
    out = timed_summary(clock, batches, arch, peaks.get(precision))
    all_seconds = clock.ends[-1] - clock.begin
    out.update({
        "label": "(a) Trainer max_length fp32" if not best else f"(b) Trainer dynamic grouped {precision}",
        "framework": "hf_trainer", "precision": precision, "padding": "dynamic" if best else "max_length",
        "grouped": best, "optimizer": optim, "dataloader_workers": num_workers,
        # transformers' LengthGroupedSampler sorts within "megabatches" of min(n // (4 * batch), 50) batches, so
        # it groups little on short runs (transfer's window is always 50 batches): compare at steps >= 200.
        "length_group_window_batches": max(1, min(len(dataset) // (4 * workload.batch_size), 50)) if best else None,
        "all_steps_seconds": round(all_seconds, 4),
        "all_steps_examples_per_s": round(sum(b.rows for b in batches) / all_seconds, 3),
        "peak_memory_mb": round(memory.peak_mb, 1), "train_peak_memory_mb": _round(memory.train_peak_mb, 1),
        "memory_measure": memory.how,
        "training_arguments": {k: v for k, v in used.items() if k != "output_dir"},
        "timer": "steady: end of step skip -> end of last step (TrainerCallback.on_step_end); "
                 "all steps: first on_step_begin -> last on_step_end",
    })
    return out


# ----------------------------------------------------------------------------------------------- (c): transfer

def transfer_spec(workload: Workload, *, precision: str, grouped: bool, steps: int | None = None,
                  encoder_impl: str = "auto", bf16_compute: str = "native"):
    """The RunSpec of transfer's loop on the benchmark workload (single task, one epoch of ``steps`` batches)."""
    from transfer.experiment.config import Profile, RunSpec

    steps = steps or workload.steps
    profile = Profile(name="bench", learning_rate=LEARNING_RATE, epochs=1, batch_size=workload.batch_size,
                      eval_batch_size=workload.eval_batch_size, max_length=workload.max_length,
                      warmup_ratio=WARMUP_RATIO, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
                      optimizer="adamw", max_train_examples=steps * workload.batch_size,
                      max_dev_examples=SMALL_EVAL, max_test_examples=SMALL_EVAL, seeds=(SEED,),
                      precision=precision, group_by_length=grouped, encoder_impl=encoder_impl,
                      bf16_compute=bf16_compute)
    return RunSpec(tasks=(workload.task.name,), stage="single", profile=profile, seed=SEED, model=workload.model)


def _clock_reporter(clock: StepClock, on_start=None, on_step=None):
    from transfer.experiment.progress import Reporter

    class ClockReporter(Reporter):
        """Marks the start of training and the end of each step (the loop calls ``step`` right after a step)."""

        def start(self, summary: dict) -> None:
            if on_start is not None:
                on_start(summary)
            clock.start()

        def step(self, step: int, total_steps: int, loss, examples_per_s: float) -> None:
            clock.step_end()
            if on_step is not None:
                on_step(step)

    return ClockReporter()


def run_transfer_loop(workload: Workload, *, precision: str, grouped: bool, steps: int | None = None,
                      on_start=None, on_step=None, now=time.perf_counter, encoder_impl: str = "auto",
                      bf16_compute: str = "native") -> tuple[dict, StepClock, BatchRecorder, "PeakMemory"]:
    """Call ``transfer.training.loop.train`` with a clock reporter and a token-counting collate; (result, clock, batches,
    memory)."""
    import transfer.training.loop as tt

    steps = steps or workload.steps
    spec = transfer_spec(workload, precision=precision, grouped=grouped, steps=steps, encoder_impl=encoder_impl,
                         bf16_compute=bf16_compute)
    clock = StepClock(workload.device, workload.skip, steps, now=now)
    recorder = BatchRecorder(tt.collate, workload.arch)
    memory = PeakMemory(workload.device)

    def started(summary: dict) -> None:
        memory.mark()
        if on_start is not None:
            on_start(summary)

    with mock.patch.object(tt, "collate", recorder), memory:
        result = tt.train(spec, data_dir=workload.data_dir, device=str(workload.device),
                          reporter=_clock_reporter(clock, started, on_step))
    return result, clock, recorder, memory


def run_transfer(workload: Workload, *, precision: str, grouped: bool, peaks: dict, encoder_impl: str = "auto",
                 bf16_compute: str = "native") -> dict:
    """(c) transfer's loop; ``precision`` is ``fp32`` or ``auto`` (bf16 where native); ``encoder_impl`` and
    ``bf16_compute`` as in the profile (``auto``: transfer.training.fast_bert for BERT encoders, ``hf``: the Hugging
    Face forward; ``native``: bf16 end to end, ``autocast``: torch.autocast over fp32 weights)."""
    result, clock, recorder, memory = run_transfer_loop(workload, precision=precision, grouped=grouped,
                                                        encoder_impl=encoder_impl, bf16_compute=bf16_compute)
    info = result["train"]
    used = info["precision"]
    compute = info.get("bf16_compute")
    out = timed_summary(clock, recorder.train, workload.arch, peaks.get(used))
    if info["steps_run"] != len(clock.ends):
        raise RuntimeError(f"transfer ran {info['steps_run']} steps but the clock saw {len(clock.ends)}")
    out.update({
        "label": f"(c) transfer {used}{' ' + compute if compute else ''} {'grouped' if grouped else 'ungrouped'} "
                 f"{info['encoder_impl']} forward",
        "framework": "transfer", "precision": used, "padding": "dynamic", "grouped": grouped,
        "encoder_impl": info["encoder_impl"], "bf16_compute": compute,
        "optimizer": "torch.optim.AdamW fused (transfer.training.loop.build_optimizer)",
        "all_steps_seconds": info["train_seconds"],
        "all_steps_examples_per_s": info["train_examples_per_s"],
        "train_examples_seen": info["train_examples_seen"],
        "run_wall_seconds": info["wall_seconds"], "run_eval_seconds": info["eval_seconds"],
        "peak_memory_mb": round(memory.peak_mb, 1), "train_peak_memory_mb": _round(memory.train_peak_mb, 1),
        "memory_measure": memory.how,
        "timer": "steady: end of step skip -> end of last step (Reporter.step); all steps: the run's train_seconds",
    })
    return out


def _round(value, digits: int):
    return None if value is None else round(value, digits)


def add_ratios(variants: dict) -> None:
    """Real tokens/s of each variant over (a)'s and over (b)'s."""
    for key, ref in (("vs_a", "hf_maxlen_fp32"), ("vs_b", "hf_dynamic_best")):
        base = variants.get(ref, {}).get("real_tokens_per_s")
        for item in variants.values():
            item[f"real_tokens_per_s_{key}"] = round(item["real_tokens_per_s"] / base, 3) if base else None


# ----------------------------------------------------------------------------------------------- evaluation

def eval_hf(workload: Workload, peaks: dict, batch_size: int = 32) -> dict:
    """(a) the HF model, ``padding="max_length"`` batches of ``batch_size``, fp32, under ``torch.no_grad()``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    device, split = workload.device, workload.dev_split
    examples = [split.examples[int(i)] for i in split.features.example_index[split.rows]]
    text_b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
    enc = workload.tokenizer([ex.text_a for ex in examples], text_b, truncation="longest_first",
                             max_length=workload.max_length, padding="max_length", return_token_type_ids=True,
                             return_tensors="pt")
    model = AutoModelForSequenceClassification.from_pretrained(workload.model_path, num_labels=workload.task.num_labels)
    model.to(device).eval()
    batches = [{k: v[i:i + batch_size] for k, v in enc.items()} for i in range(0, len(examples), batch_size)]

    def run(chunks):
        out = []
        for batch in chunks:
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(model(**batch).logits.argmax(-1))
        sync(device)
        return out

    with torch.no_grad():
        run(batches[:1])  # warm-up, untimed
        start = time.perf_counter()
        run(batches)
        seconds = time.perf_counter() - start
    records = [record_from_mask(b["attention_mask"], workload.arch, training=False) for b in batches]
    return _eval_summary(f"(a) HF no_grad max_length x{batch_size} fp32", "fp32", records, seconds,
                         workload.arch, peaks.get("fp32"))


def eval_transfer(workload: Workload, peaks: dict, precision: str = "auto", encoder_impl: str = "auto",
                  bf16_compute: str = "native") -> dict:
    """(c) ``transfer.training.loop.predict_split``: inference_mode, length-sorted batches of ``eval_batch_size``, the
    encoder forward chosen as ``transfer.training.loop.setup_encoder`` chooses it, bf16 computed as
    ``bf16_compute`` says."""
    import transfer.training.loop as tt
    from transfer.training.masks import MaskSource
    from transfer.training.model import MultiTaskModel

    device, split = workload.device, workload.dev_split
    used = tt.resolve_precision(precision, device)
    model = MultiTaskModel.from_pretrained(workload.model, [workload.task])
    native = used == "bf16" and bf16_compute == "native"
    impl = tt.setup_encoder(model, encoder_impl, device, MaskSource(SEED), native)  # eval: no mask is drawn
    compute = tt.bf16_compute(used, bf16_compute, model)
    model.to(device)
    pad_id = workload.tokenizer.pad_token_id
    recorder = BatchRecorder(tt.collate, workload.arch)
    # An untimed pass over the same batches first: each batch width is a new matmul shape, and the first call of a
    # shape builds its kernels (oneDNN's primitive cache on the CPU): up to 12% of a cold pass on an AMX Xeon.
    # A run evaluates the same dev batches every epoch, so the warm pass is what its evaluations cost after the first
    # (and (a), whose max_length batches have one shape, is warm after its one warm-up batch).
    start = time.perf_counter()
    tt.predict_split(model, split, workload.eval_batch_size, device, used, pad_id)
    sync(device)
    cold = time.perf_counter() - start
    with mock.patch.object(tt, "collate", recorder):
        start = time.perf_counter()
        tt.predict_split(model, split, workload.eval_batch_size, device, used, pad_id)
        sync(device)
        seconds = time.perf_counter() - start
    del model
    label = f"(c) predict_split sorted x{workload.eval_batch_size} {used}{' ' + compute if compute else ''} {impl} forward"
    summary = _eval_summary(label, used, recorder.eval, seconds, workload.arch, peaks.get(used))
    summary["timer"] = "the second of two full passes over the dev sample (the first builds each width's kernels)"
    return {**summary, "bf16_compute": compute, "cold_pass_seconds": round(cold, 4)}


def _eval_summary(label: str, precision: str, records: list[BatchRecord], seconds: float, arch: Arch,
                  peak: float | None) -> dict:
    examples = sum(r.rows for r in records)
    real = sum(r.real_tokens for r in records)
    padded = sum(r.padded_tokens for r in records)
    flops = sum(r.flops for r in records)
    executed = arch.padded_forward_flops(records)
    return {
        "label": label, "precision": precision, "examples": examples, "real_tokens": real, "padded_tokens": padded,
        "pad_fraction": round(1 - real / padded, 4), "seconds": round(seconds, 4),
        "examples_per_s": round(examples / seconds, 2), "real_tokens_per_s": round(real / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1), "model_gflops_per_s": round(flops / seconds / 1e9, 3),
        "executed_gflops_per_s": round(executed / seconds / 1e9, 3),
        "peak_gflops": peak, **utilisation(flops / seconds / 1e9, executed / seconds / 1e9, peak),
        "timer": "one full pass over the dev sample after an untimed warm-up batch; tokenisation not timed",
    }


# ----------------------------------------------------------------------------------------------- profile

def profile_step(workload: Workload, *, warm_steps: int = 3, top: int = 10) -> dict:
    """``torch.profiler`` (CPU activities, + CUDA on a GPU) over training step ``warm_steps + 1`` of transfer's
    loop at its defaults; the ``top`` ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if workload.device.type == "cuda" else [])
    prof = profile(activities=activities)

    def on_step(step: int) -> None:
        if step == warm_steps:
            sync(workload.device)
            prof.start()
        elif step == warm_steps + 1:
            sync(workload.device)
            prof.stop()

    steps = warm_steps + 1
    result, clock, recorder, _ = run_transfer_loop(workload, precision="auto", grouped=True, steps=steps, on_step=on_step)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    gemm = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in GEMM_OPS))
    batch = recorder.train[warm_steps]
    # Whole regions (total CPU time, children included): the optimizer's step and zero_grad, the dropout masks.
    regions = {e.key: round(e.cpu_time_total / 1000, 3) for e in events
               if e.key.startswith("Optimizer.") or e.key in ("aten::dropout", "aten::native_dropout", "aten::bernoulli_")}
    return {
        "step": steps, "precision": result["train"]["precision"], "batch_rows": batch.rows, "batch_width": batch.width,
        "batch_real_tokens": batch.real_tokens,
        "step_seconds_profiled": round(clock.ends[-1] - clock.ends[-2], 4),
        "self_cpu_ms_total": round(total / 1000, 3),
        "gemm_share_of_self_cpu": round(gemm / total, 4),
        "regions_cpu_total_ms": regions,
        "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3),
                     "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                     "cpu_total_ms": round(e.cpu_time_total / 1000, 3)} for e in ranked[:top]],
        "note": "profiled under torch.profiler (adds overhead); self CPU time of each op, nested ops not double-counted",
    }
