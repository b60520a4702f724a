# Over 300 lines: the whole scenario tree in one place, so a reader sees every field, its default and its range.
"""The typed scenario tree: every field, its type, its default and its valid range.

Every class here is a frozen pydantic model (`config.base`); `config.load` validates YAML into them (types,
unknown keys), and the `check()` methods add what types cannot say (ranges, combinations).
A failure raises `ConfigError` naming the dotted field, the value and what was expected.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from hosfl_sim.config.base import ConfigModel


class ConfigError(ValueError):
    """A scenario is invalid. The message names the field, the value and what was expected."""

    def __init__(self, path: str, value: object, expected: str):
        self.path, self.value, self.expected = path, value, expected
        super().__init__(f"{path}: got {shortened(value)}, expected {expected}")


def shortened(value: object, limit: int = 200) -> str:
    """repr(value), cut to about `limit` characters: an error line echoes what it refuses, never megabytes of it."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text):,} characters)"


def directory_name(label: str) -> str:
    """`label` as a run directory names it: letters, digits and - _ . kept, anything else an underscore."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def _require(ok: bool, path: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(path, value, expected)


# ----------------------------------------------------------------------------- task


class SyntheticConfig(ConfigModel):
    """Gaussian class clusters; only used when `dataset.name == 'synthetic'`."""

    num_samples: int = 2000
    num_features: int = 64
    num_classes: int = 10
    class_sep: float = 1.5
    image_side: int = 8  # features are reshaped to (1, side, side) when side**2 == num_features


class DatasetConfig(ConfigModel):
    name: str = "digits"  # digits | synthetic | mnist | fashion_mnist | cifar10 | cifar100 | npz | files | glue/...
    path: str | None = None  # local file or directory (npz, parquet, csv, tsv)
    test_fraction: float = 0.25  # only for sources without their own test split
    max_train: int | None = None  # cap on training samples (None: all)
    max_test: int | None = None
    seed: int = 0  # seed of the train/test split and subsampling
    # image inputs: per-channel statistics of the training rows, fixed constants (`cifar`: the paper's code's
    # CIFAR mean/std, `imagenet`: torchvision's), or pixels in [0, 1] as they are
    normalize: Literal["train_stats", "cifar", "imagenet", "none"] = "train_stats"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    # text tasks (language models)
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str = "label"
    max_length: int = 128
    # a prompt built from the row's columns, e.g. "{sentence} It was" (then it is the whole input: no pair)
    template: str | None = None

    def check(self, path: str) -> None:
        _require(0.0 < self.test_fraction < 1.0, f"{path}.test_fraction", self.test_fraction, "a number in (0, 1)")
        for name in ("max_train", "max_test"):
            v = getattr(self, name)
            _require(v is None or v > 0, f"{path}.{name}", v, "a positive integer or null")
        v = self.max_length  # tokens per row, padded: rows x max_length ids are held in memory
        _require(0 < v <= 131_072, f"{path}.max_length", v, "a positive integer of at most 131072 (tokens per row)")


class PartitionConfig(ConfigModel):
    # dirichlet_balanced: DeComFL's split (Dirichlet label skew, then rebalanced to equal sizes)
    scheme: Literal["iid", "dirichlet", "dirichlet_balanced", "shards"] = "iid"
    alpha: float = 0.5  # Dirichlet concentration (dirichlet, dirichlet_balanced)
    min_size: int = 2  # smallest partition the Dirichlet draw may leave (dirichlet only)
    classes_per_client: int = 2  # shards only

    def check(self, path: str) -> None:
        _require(self.alpha > 0, f"{path}.alpha", self.alpha, "a number > 0")
        _require(self.min_size >= 0, f"{path}.min_size", self.min_size, "an integer >= 0")
        _require(self.classes_per_client >= 1, f"{path}.classes_per_client", self.classes_per_client, "an integer >= 1")


class ModelConfig(ConfigModel):
    name: str = "cnn"  # cnn | resnet18 | a Hugging Face model id or local path (language)
    cut: str | int = "block1"  # a named cut point (vision) or a layer index (language)
    width: int = 16  # base channel count of the vision models
    weights: str | None = None  # imagenet (from the Hugging Face hub) or a local weights file, vision models
    # BatchNorm scale and shift never train, on either side (the paper's vision code); running statistics
    # still update wherever a side trains in train mode
    freeze_bn_affine: bool = False
    # language models
    head: Literal["classifier", "verbalizer"] = "classifier"
    verbalizer: list[str] = Field(default_factory=list)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = Field(default_factory=list)  # empty: the architecture's q/v projections
    finetune: Literal["lora", "full"] = "lora"
    dtype: Literal["float32", "bfloat16"] = "float32"
    config_overrides: dict = Field(default_factory=dict)  # e.g. a tiny random config for tests

    def check(self, path: str) -> None:
        _require(self.width >= 1, f"{path}.width", self.width, "an integer >= 1")
        _require(self.lora_r >= 1, f"{path}.lora_r", self.lora_r, "an integer >= 1")


class TaskConfig(ConfigModel):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)

    def check(self, path: str) -> None:
        self.dataset.check(f"{path}.dataset")
        self.partition.check(f"{path}.partition")
        self.model.check(f"{path}.model")


# ----------------------------------------------------------------------------- algorithms


class OptimizerConfig(ConfigModel):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    momentum: float = 0.0  # sgd only

    def check(self, path: str) -> None:
        _require(self.lr > 0, f"{path}.lr", self.lr, "a number > 0")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{path}.betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _require(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "a number >= 0")
        _require(0 <= self.momentum < 1, f"{path}.momentum", self.momentum, "a number in [0, 1)")


class AlgorithmConfig(ConfigModel):
    """One algorithm to run. Besides name, label, local_steps and local_epochs, each algorithm reads only some of
    these fields (`hosfl-sim list --algorithms` names them); setting one it does not read is refused."""

    name: str = "hosfl"  # see `hosfl-sim list --algorithms`
    label: str | None = None  # how plots and tables name it (default: the algorithm's name)
    local_steps: int = 1  # mini-batches each sampled client processes per round
    # full passes over the client's partition per round instead: ceil(partition size / batch) x local_epochs
    # mini-batches, each epoch a fresh shuffle (first-order methods that take it; exclusive with local_steps)
    local_epochs: int | None = None
    perturbations: int = 5  # P
    mu: float = 1e-3  # perturbation scale
    distribution: Literal["gaussian", "rademacher"] = "gaussian"
    probe: Literal["functional", "inplace", "batched"] = "functional"  # how ZO probes perturb the client (zo_client.py)
    client_optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    server_optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    # HO-SFL: how the server scales gradients over the K clients of a step. Ours: each client's loss with
    # weight 1 (g = dl_k/da), the server's gradient averaged (1/K). The paper's code back-propagates each
    # loss with weight 1/K (cut_grad_scale "1/K", both runners) and its vision runner then divides the
    # server's gradient by K again (server_grad_scale "1/K^2"). AdamW is nearly blind to either scale.
    cut_grad_scale: Literal["1", "1/K"] = "1"
    server_grad_scale: Literal["1/K", "1/K^2"] = "1/K"
    # MU-SplitFed
    server_steps: int = 2  # tau: server zeroth-order steps per client step
    global_lr: float = 0.3  # eta_g: theta += global_lr * mean_k (theta_k - theta), both sides
    # FSL-SAGE
    align_every: int = 5  # local steps (counted over the run) per alignment with the server
    aux_passes: int = 5  # passes over the buffer per refit of the aux head
    aux_lr: float = 1e-3  # Adam learning rate of the aux head
    aux_buffer: int = 8  # (a, y, g) batches the aux head is refit on, newest first
    # FSL-SAGE as the paper's code (fsl_sage_persistent): (a, y) samples each client's buffer keeps, and the
    # batch size of the server's alignment passes over it
    aux_buffer_samples: int = 1000
    aux_batch: int = 100
    # CSE-FSL: a client uploads its activations and labels at the local steps t % upload_every == 0 of a round
    upload_every: int = 5
    # LocFedMix-SL
    mi_weight: float = 0.5  # weight of the client's input-reconstruction (mutual-information) term in its local loss
    smashmix: int = 1  # mixed-up batches the server adds per local step (SmashMix; 0: none)
    mix_alpha: float = 2.0  # SmashMix draws its mixing weights lambda ~ Beta(mix_alpha, mix_alpha)
    # FedSplitX: the cut points clients are spread over (client c cuts at cuts[c % len(cuts)]); empty: the model's
    cuts: list[str] = Field(default_factory=list)

    def check(self, path: str) -> None:
        n = len(self.label or "")  # it names the run's directory: file systems take 255 bytes
        _require(n <= 200, f"{path}.label", self.label, "a label of at most 200 characters")
        _require(self.local_steps >= 1, f"{path}.local_steps", self.local_steps, "an integer >= 1")
        e = self.local_epochs
        _require(e is None or e >= 1, f"{path}.local_epochs", e, "an integer >= 1 or null")
        if e is not None:
            expected = "1 (the default) when local_epochs is set: a round is then local_epochs full passes"
            _require(self.local_steps == 1, f"{path}.local_steps", self.local_steps, expected)
        p = self.perturbations  # each is a forward per step (and a copy of the batch when probes are batched)
        _require(1 <= p <= 10_000, f"{path}.perturbations", p, "an integer in [1, 10000] (P)")
        _require(self.mu > 0, f"{path}.mu", self.mu, "a number > 0")
        for name in ("server_steps", "align_every", "aux_passes", "aux_buffer", "aux_buffer_samples", "aux_batch"):
            v = getattr(self, name)
            _require(v >= 1, f"{path}.{name}", v, "an integer >= 1")
        _require(self.upload_every >= 1, f"{path}.upload_every", self.upload_every, "an integer >= 1")
        _require(self.mi_weight >= 0, f"{path}.mi_weight", self.mi_weight, "a number >= 0")
        _require(self.smashmix >= 0, f"{path}.smashmix", self.smashmix, "an integer >= 0")
        _require(self.mix_alpha > 0, f"{path}.mix_alpha", self.mix_alpha, "a number > 0")
        _require(len(set(self.cuts)) == len(self.cuts), f"{path}.cuts", self.cuts, "distinct cut points")
        for name in ("global_lr", "aux_lr"):
            v = getattr(self, name)
            _require(v > 0, f"{path}.{name}", v, "a number > 0")
        self.client_optimizer.check(f"{path}.client_optimizer")
        self.server_optimizer.check(f"{path}.server_optimizer")

    @property
    def display_name(self) -> str:
        return self.label or self.name


# ----------------------------------------------------------------------------- system (devices, links, policies)


class DistributionConfig(ConfigModel):
    """A per-client quantity: `constant` (value), `uniform` (low, high) or `lognormal` (median, sigma)."""

    kind: Literal["constant", "uniform", "lognormal"] = "constant"
    value: float = 1.0
    low: float = 1.0
    high: float = 1.0
    median: float = 1.0
    sigma: float = 0.5

    def check(self, path: str, minimum: float = 0.0) -> None:
        for name in ("value", "low", "high", "median"):
            v = getattr(self, name)
            ok = math.isfinite(v) and (v > minimum if minimum == 0.0 else v >= minimum)
            expected = f"a finite number > {minimum:g}" if minimum == 0.0 else f"a finite number >= {minimum:g}"
            _require(ok, f"{path}.{name}", v, expected)
        _require(self.low <= self.high, f"{path}.high", self.high, f"a number >= low ({self.low})")
        _require(self.sigma >= 0, f"{path}.sigma", self.sigma, "a number >= 0")


def _const(value: float) -> DistributionConfig:
    return DistributionConfig(kind="constant", value=value, low=value, high=value, median=value)


class TierConfig(ConfigModel):
    """A device class drawn with probability `proportion`; its non-null fields replace the distributions."""

    name: str = "tier"
    proportion: float = 1.0
    compute_flops: float | None = None
    uplink_bps: float | None = None
    downlink_bps: float | None = None
    latency_s: float | None = None

    def check(self, path: str) -> None:
        _require(self.proportion > 0, f"{path}.proportion", self.proportion, "a number > 0")
        for name in ("compute_flops", "uplink_bps", "downlink_bps"):
            v = getattr(self, name)
            _require(v is None or v > 0, f"{path}.{name}", v, "a number > 0 or null")
        _require(self.latency_s is None or self.latency_s >= 0, f"{path}.latency_s", self.latency_s, "a number >= 0")


class AvailabilityConfig(ConfigModel):
    """Which clients can be sampled in a round: per-round dropout, on/off windows, or a trace."""

    dropout: float = 0.0  # probability that a client is unavailable in a given round
    period: int = 0  # on/off windows: each client is available `on_rounds` of every `period` rounds (0: off)
    on_rounds: int = 0
    trace: str | None = None  # CSV/Parquet with client_id, round, available (rows absent: available)
    mid_round_dropout: float = 0.0  # probability that a sampled client fails before its upload

    def check(self, path: str) -> None:
        _require(0 <= self.dropout < 1, f"{path}.dropout", self.dropout, "a probability in [0, 1)")
        _require(
            0 <= self.mid_round_dropout < 1,
            f"{path}.mid_round_dropout",
            self.mid_round_dropout,
            "a probability in [0, 1)",
        )
        _require(self.period >= 0, f"{path}.period", self.period, "an integer >= 0")
        if self.period:
            _require(
                1 <= self.on_rounds <= self.period,
                f"{path}.on_rounds",
                self.on_rounds,
                f"an integer in [1, period={self.period}]",
            )


class SystemConfig(ConfigModel):
    """Simulated devices, links and round policy. The defaults model a uniform federation of
    phone-class clients on a good link, and the synchronous policy: older scenarios keep working."""

    compute_flops: DistributionConfig = Field(default_factory=lambda: _const(1e10))  # FLOP/s
    uplink_bps: DistributionConfig = Field(default_factory=lambda: _const(20e6))
    downlink_bps: DistributionConfig = Field(default_factory=lambda: _const(50e6))
    latency_s: DistributionConfig = Field(default_factory=lambda: _const(0.02))
    tiers: list[TierConfig] = Field(default_factory=list)
    trace: str | None = None  # CSV/Parquet keyed by client_id: compute_flops, uplink_bps, downlink_bps, latency_s, tier
    server_flops: float = 1e12
    server_link_bps: float | None = None  # a per-connection cap at the server (null: not a bottleneck)
    straggler_fraction: float = 0.0
    straggler_slowdown: float = 1.0  # stragglers compute this many times slower
    availability: AvailabilityConfig = Field(default_factory=AvailabilityConfig)
    policy: Literal["sync", "deadline", "overcommit"] = "sync"
    deadline_s: float | None = None  # deadline policy: round cutoff in simulated seconds
    overcommit: float = 1.3  # overcommit policy: sample ceil(overcommit * K), keep the first K to arrive

    def check(self, path: str) -> None:
        # under 1 FLOP/s or 1 bit/s is a typo, and would overflow the simulated clock
        self.compute_flops.check(f"{path}.compute_flops", minimum=1.0)
        self.uplink_bps.check(f"{path}.uplink_bps", minimum=1.0)
        self.downlink_bps.check(f"{path}.downlink_bps", minimum=1.0)
        for name in ("value", "low", "high", "median"):
            v = getattr(self.latency_s, name)
            _require(math.isfinite(v) and v >= 0, f"{path}.latency_s.{name}", v, "a finite number >= 0")
        for i, t in enumerate(self.tiers):
            t.check(f"{path}.tiers[{i}]")
        v = self.server_flops
        _require(math.isfinite(v) and v >= 1.0, f"{path}.server_flops", v, "a finite number >= 1 (FLOP/s)")
        for name in ("straggler_slowdown", "overcommit"):
            v = getattr(self, name)
            _require(math.isfinite(v), f"{path}.{name}", v, "a finite number")
        v = self.server_link_bps
        _require(v is None or v > 0, f"{path}.server_link_bps", v, "a number > 0 or null")
        _require(
            0 <= self.straggler_fraction <= 1,
            f"{path}.straggler_fraction",
            self.straggler_fraction,
            "a number in [0, 1]",
        )
        _require(self.straggler_slowdown >= 1, f"{path}.straggler_slowdown", self.straggler_slowdown, "a number >= 1")
        self.availability.check(f"{path}.availability")
        if self.policy == "deadline":
            d = self.deadline_s
            _require(d is not None and d > 0, f"{path}.deadline_s", d, "a number > 0 (the deadline policy needs it)")
        _require(self.overcommit >= 1, f"{path}.overcommit", self.overcommit, "a number >= 1")


# ----------------------------------------------------------------------------- federation, runtime


class FederationConfig(ConfigModel):
    num_clients: int = 20  # N
    clients_per_round: int = 5  # K
    rounds: int = 50  # upper bound on rounds; budget_samples may stop earlier
    batch_size: int = 32
    eval_every: int = 5  # evaluate on the test split every this many rounds (and at the end)
    budget_samples: int | None = None  # stop once clients have processed this many samples

    def check(self, path: str) -> None:
        _require(self.num_clients >= 1, f"{path}.num_clients", self.num_clients, "an integer >= 1")
        _require(
            1 <= self.clients_per_round <= self.num_clients,
            f"{path}.clients_per_round",
            self.clients_per_round,
            f"an integer in [1, num_clients={self.num_clients}]",
        )
        _require(self.rounds >= 1, f"{path}.rounds", self.rounds, "an integer >= 1")
        _require(self.batch_size >= 1, f"{path}.batch_size", self.batch_size, "an integer >= 1")
        _require(self.eval_every >= 1, f"{path}.eval_every", self.eval_every, "an integer >= 1")
        b = self.budget_samples
        _require(b is None or b > 0, f"{path}.budget_samples", b, "a positive integer or null")


class RuntimeConfig(ConfigModel):
    backend: Literal["ray", "local"] = "ray"  # local: everything in this process (debugging, tests)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA where given a GPU torch sees; cuda: refused else
    fuse_clients: bool | Literal["auto"] = "auto"  # a worker's clients as one batched forward; auto: on CUDA only
    fuse_server: bool = False  # HO-SFL's server step on the K uploads as one batch (no BatchNorm in train mode)
    num_workers: int = 2  # ClientWorker actors; each serves any virtual client
    worker_num_cpus: float = 1.0
    worker_num_gpus: float = 0.0  # Ray backend: fractional GPUs per worker, which runs on it (none: on the CPU)
    server_num_cpus: float = 1.0
    server_num_gpus: float = 0.0  # Ray backend: fractional GPUs of the server actor
    torch_threads: int = 1  # intra-op threads per actor
    memory_every: int = 0  # measure client and server memory every this many rounds (0: never)
    address: str | None = None  # Ray cluster address; null starts a local instance
    checkpoint_every: int = 0  # write a resumable checkpoint every this many rounds (0: only when stopped)
    track: list[Literal["wandb", "mlflow", "tensorboard"]] = Field(default_factory=list)  # experiment trackers

    def check(self, path: str) -> None:
        _require(self.num_workers >= 1, f"{path}.num_workers", self.num_workers, "an integer >= 1")
        for name in ("worker_num_cpus", "worker_num_gpus", "server_num_cpus", "server_num_gpus"):
            v = getattr(self, name)
            _require(v >= 0, f"{path}.{name}", v, "a number >= 0")
            whole = "gpus" not in name or v <= 1 or v % 1 == 0  # Ray takes a fraction of one GPU or whole GPUs
            _require(whole, f"{path}.{name}", v, "a fraction in [0, 1] or a whole number of GPUs (Ray's rule)")
        _require(self.torch_threads >= 1, f"{path}.torch_threads", self.torch_threads, "an integer >= 1")
        _require(self.memory_every >= 0, f"{path}.memory_every", self.memory_every, "an integer >= 0 (0: off)")
        v = self.checkpoint_every
        _require(v >= 0, f"{path}.checkpoint_every", v, "an integer >= 0 (0: only when a run is stopped)")


class Scenario(ConfigModel):
    """A whole experiment: one task, several algorithms, several seeds."""

    name: str = "unnamed"
    description: str = ""
    task: TaskConfig = Field(default_factory=TaskConfig)
    algorithms: list[AlgorithmConfig] = Field(default_factory=lambda: [AlgorithmConfig()])
    federation: FederationConfig = Field(default_factory=FederationConfig)
    seeds: list[int] = Field(default_factory=lambda: [0])
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    system: SystemConfig = Field(default_factory=SystemConfig)
    output_dir: str = "runs"

    def check(self) -> None:
        self.task.check("task")
        _require(len(self.algorithms) >= 1, "algorithms", self.algorithms, "a non-empty list")
        for i, a in enumerate(self.algorithms):
            a.check(f"algorithms[{i}]")
        labels = [a.display_name for a in self.algorithms]
        _require(len(set(labels)) == len(labels), "algorithms", labels, "distinct names or labels")
        dirs = [directory_name(label) for label in labels]  # two runs must never share a directory
        expected = f"labels that stay distinct as directory names (they become {dirs})"
        _require(len(set(dirs)) == len(dirs), "algorithms", labels, expected)
        self.federation.check("federation")
        _require(len(self.seeds) >= 1, "seeds", self.seeds, "a non-empty list of integers")
        _require(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "distinct integers (one run each)")
        for i, seed in enumerate(self.seeds):
            _require(0 <= seed < 2**63, f"seeds[{i}]", seed, "an integer in [0, 2^63)")
        self.runtime.check("runtime")
        self.system.check("system")
        fed, system = self.federation, self.system
        if system.policy == "overcommit":  # ceil(c K) clients are sampled: they must exist
            most = fed.num_clients / fed.clients_per_round
            _require(
                system.overcommit * fed.clients_per_round <= fed.num_clients,  # = ceil(..) <= n; no overflow
                "system.overcommit",
                system.overcommit,
                f"a number with ceil(overcommit x clients_per_round) <= num_clients (at most {most:g} here)",
            )
