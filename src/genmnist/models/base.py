"""The contract every genmnist model follows.

A model is a `torch.nn.Module` with

* a JSON-serialisable, versioned config dataclass (`ModelConfig` subclass),
* `GenerativeModel.sample` returning images ``(n, 1, 28, 28)`` in ``[0, 1]``,
* `GenerativeModel.training_loss`, the hook the shared trainer calls,
* `GenerativeModel.save_pretrained` / `GenerativeModel.from_pretrained`
  writing and reading ``config.json`` + ``model.safetensors``.

Conventions settled once for all models: images cross the public API as floats in
``[0, 1]`` with shape ``(n, 1, 28, 28)``; any rescaling is the model's own business.
Sampling with a seed is reproducible per sample: sample ``i`` is the same whether drawn in
a batch of 8 or 800 (see `SampleNoise`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from genmnist._version import __version__
from genmnist.errors import CheckpointError, ConfigError, SamplingError
from genmnist.io import (
    check_same_tensors,
    load_tensors,
    save_tensors,
    to_json_value,
    write_json,
)
from genmnist.nn.modes import evaluating
from genmnist.precision import bf16_is_fast
from genmnist.registry import MODELS
from genmnist.run_folder import CONFIG_FILE, CONFIG_FORMAT, WEIGHTS_FILE
from genmnist.values import whole_labels, whole_number

if TYPE_CHECKING:
    from genmnist.data import InMemoryDataset
    from genmnist.export import ExportSpec

NUM_PIXELS = 28 * 28
IMAGE_SHAPE = (1, 28, 28)
#: Bytes `GenerativeModel.sample` holds per sample: the batches and their concatenation
#: (float32 images, twice) and the per-sample seed.
SAMPLE_BYTES = 2 * 4 * NUM_PIXELS + 64
NONFINITE_MESSAGE = (
    "sampling produced NaN or inf values (a guidance scale or temperature far too large?)"
)


def check_sample_count(n: int) -> None:
    """`ConfigError` unless ``n`` samples fit in the available memory (checked before any
    per-sample allocation, so ``-n 1000000000`` fails at once, in one line)."""
    from genmnist.memory import check_fits

    check_fits(
        n * SAMPLE_BYTES,
        f"holding {n:,} samples",
        "draw fewer samples (-n), in several runs if you need more",
    )


def check_finite_images(images: torch.Tensor) -> None:
    """`SamplingError` if ``images`` hold NaN or inf (checked before clamping, which keeps
    NaN and hides inf)."""
    if not bool(torch.isfinite(images).all()):
        raise SamplingError(NONFINITE_MESSAGE)


M = TypeVar("M", bound="GenerativeModel")


@dataclass
class ModelConfig:
    """Fields every model config has: the training recipe the shared trainer reads.

    Subclasses add architecture fields. All fields must be JSON values (numbers, strings,
    booleans, lists, dicts, None); tuples are stored as lists.

    Attributes:
        num_classes: 0 for an unconditional model, else the number of class labels.
        batch_size: Training batch size.
        lr: Peak learning rate.
        optimizer: Name in `genmnist.training.OPTIMIZERS` (``adam``, ``adamw``, ``sgd``).
        weight_decay: Optimizer weight decay.
        betas: Adam betas.
        lr_schedule: Name in `genmnist.training.LR_SCHEDULES`.
        warmup_steps: Linear learning-rate warm-up steps.
        grad_clip: Clip the gradient norm to this value (None: no clipping).
        ema_decay: Keep an exponential moving average of the weights (None: no EMA).
        precision: ``"bf16"`` (autocast), ``"fp32"``, or ``"auto"`` (bf16 where the
            model says it helps, see `GenerativeModel.bf16_helps`).
    """

    num_classes: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    ema_decay: float | None = None
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values."""
        return to_json_value(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from `to_dict` output; missing fields take their defaults.

        Raises:
            ConfigError: naming unknown fields.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                if not _fits(value, hints.get(f.name, Any)):
                    raise ConfigError(
                        f"{cls.__name__} field '{f.name}' must be "
                        f"{_describe(hints[f.name])}, got {value!r}"[:300]
                    )
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def first_difference(self, other: ModelConfig, fields: Sequence[str]) -> str | None:
        """The first of ``fields`` in which ``other`` differs from this config, worded for
        an error message about ``other`` ("its channels (...) differs from the model's
        (...)"), or None."""
        for field in fields:
            theirs, mine = getattr(other, field), getattr(self, field)
            if _as_tuple(theirs) != _as_tuple(mine):  # a config built by hand may hold lists
                return f"its {field} ({theirs!r}) differs from the model's ({mine!r})"
        return None

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (unknown names raise `ConfigError`)."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (ints count as floats;
    bools are not numbers; lists stand for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # NaN and inf (which JSON files may hold) are no setting
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (
            len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is list or hint is list:
        return isinstance(value, list | tuple)
    return True  # an annotation this check does not know: leave it to the model


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    return str(hint).replace("typing.", "")


class SampleNoise:
    """Gaussian noise drawn per sample, so sample ``i`` does not depend on the batch.

    Each sample owns a generator seeded from ``(base_seed, i)``; every call to
    `randn` draws the next values of each sample's own stream. Models draw all their
    randomness through this object when sampling.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._generators = []
        for seed in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(seed))
            self._generators.append(g)

    def __len__(self) -> int:
        return len(self._generators)

    def randn(self, *shape: int) -> torch.Tensor:
        """A ``(len(self), *shape)`` tensor of standard normal noise."""
        out = torch.stack([torch.randn(shape, generator=g) for g in self._generators])
        return out.to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """A ``(len(self), *shape)`` tensor of uniform noise in ``[0, 1)``."""
        out = torch.stack([torch.rand(shape, generator=g) for g in self._generators])
        return out.to(self.device)

    @staticmethod
    def sample_seeds(n: int, generator: torch.Generator | None = None, seed: int | None = None):
        """Per-sample seeds ``base * 1_000_003 + i``, wrapped modulo 2**64 (the range
        generators accept); ``base`` comes from ``seed``, ``generator`` or the global RNG,
        in that order."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return [(seed * 1_000_003 + i) % 2**64 for i in range(n)]


class GenerativeModel(nn.Module):
    """Base class of every genmnist model.

    Subclasses set `config_class`, build their layers from ``self.config`` and
    implement `generate` (one batch of samples from per-sample noise) and
    `training_loss`.

    Args:
        config: The model's config; defaults to ``config_class()``.
        **overrides: Config fields to change, e.g. ``VAE(latent_dim=16)``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: Version of the config schema. Bump it when a field changes meaning, and teach
    #: `migrate_config` to upgrade older dicts, so old checkpoints keep loading.
    config_version: ClassVar[int] = 1
    #: Name used in ``config.json`` when the model was not made through the registry.
    default_name: ClassVar[str] = ""
    #: Package holding shipped weights as ``<dataset>/<name>/{config.json,model.safetensors}``.
    pretrained_package: ClassVar[str] = "genmnist.pretrained"
    #: Whether bf16 autocast speeds up training on CPU (``precision="auto"``), as measured.
    bf16_helps: ClassVar[bool] = False
    #: Precision `sample` uses by default where bf16 has native kernels: ``"bf16"``
    #: (autocast; measured about 4x faster for the diffusion U-Net on an AVX-512 CPU at
    #: equal sample quality) or ``"fp32"``. See `default_sampling_precision`.
    sampling_precision: ClassVar[str] = "fp32"
    #: Extra keyword options `sample` accepts and passes to `generate`
    #: (e.g. ``sampler``, ``steps``, ``guidance`` for diffusion models).
    sampling_options: ClassVar[tuple[str, ...]] = ()
    #: A composite model's parts: models of their own, saved in sub-folders of these names
    #: by `save_pretrained` and given back to the constructor by name when loading.
    parts: ClassVar[tuple[str, ...]] = ()
    #: Whether data-parallel training must look for parameters the loss leaves unused
    #: (DistributedDataParallel's ``find_unused_parameters``): set it on a single-phase
    #: model whose `training_loss` can leave some parameters without gradients, or DDP
    #: fails waiting for them. Models with several `optimizer_groups` get it anyway.
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        base = config if config is not None else self.config_class()
        if not isinstance(base, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(base).__name__}"
            )
        self.config = base.replace(**overrides) if overrides else base
        self.name = self.default_name or type(self).__name__.lower()
        if self.config.num_classes < 0:
            raise ConfigError("num_classes must be >= 0")

    # ----------------------------------------------------------------- properties
    @property
    def conditional(self) -> bool:
        """True if the model takes class labels."""
        return self.config.num_classes > 0

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter (CPU for a model without any)."""
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------- sampling
    def default_sampling_precision(self) -> str:
        """The precision `sample` uses when none is given: `sampling_precision`, but
        ``"fp32"`` on a CPU without native bf16 kernels, where bf16 autocast is emulated
        (`genmnist.precision.bf16_is_fast`)."""
        if self.sampling_precision == "bf16" and not bf16_is_fast(self.device.type):
            return "fp32"
        return self.sampling_precision

    def sample(
        self,
        n: int,
        labels: int | Sequence[int] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
        batch_size: int = 1000,
        precision: str | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Draw ``n`` images, a float tensor ``(n, 1, 28, 28)`` in ``[0, 1]`` on the CPU.

        Args:
            n: Number of images (> 0).
            labels: For conditional models: one label for all, one per sample, or None for
                the balanced cycle ``0, 1, ..., 9, 0, 1, ...``. Must be None for
                unconditional models.
            generator: Source of the base seed when ``seed`` is not given.
            seed: Makes sampling reproducible; sample ``i`` is identical whatever ``n``
                and ``batch_size`` are.
            batch_size: Images generated at once (bounds memory for large ``n``).
            precision: ``"bf16"`` (autocast) or ``"fp32"``; default:
                `default_sampling_precision`.
            progress: Called with the number of images drawn so far after each batch
                (for a progress bar).
            **options: Model-specific options named in `sampling_options`.
        """
        n = whole_number("the number of samples", n, minimum=1)
        batch_size = whole_number("batch_size", batch_size, minimum=1)
        if seed is not None:
            seed = whole_number("seed", seed)
        unknown = sorted(set(options) - set(self.sampling_options))
        if unknown:
            takes = ", ".join(self.sampling_options) or "none"
            raise ConfigError(
                f"model '{self.name}' takes no sampling option {', '.join(unknown)} "
                f"(it takes: {takes})"
            )
        precision = precision or self.default_sampling_precision()
        if precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision must be 'bf16' or 'fp32', got '{precision}'")
        check_sample_count(n)
        label_tensor = self._check_labels(n, labels)
        seeds = SampleNoise.sample_seeds(n, generator, seed)
        out = []
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=precision == "bf16")
        with evaluating(self), torch.inference_mode(), autocast:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                noise = SampleNoise(seeds[start:stop], self.device)
                batch_labels = None if label_tensor is None else label_tensor[start:stop]
                if batch_labels is not None:
                    batch_labels = batch_labels.to(self.device)
                images = self.generate(noise, batch_labels, **options)
                check_finite_images(images)
                out.append(images.float().clamp(0, 1).cpu())
                if progress is not None:
                    progress(stop)
        return torch.cat(out)

    def _check_labels(self, n: int, labels: Any) -> torch.Tensor | None:
        if not self.conditional:
            if labels is not None:
                raise ConfigError(f"model '{self.name}' is unconditional: it takes no labels")
            return None
        k = self.config.num_classes
        if labels is None:
            return torch.arange(n) % k
        problem = f"labels must be integers in 0..{k - 1} for model '{self.name}'"
        tensor = whole_labels(labels, problem)
        if tensor.numel() == 1:
            tensor = tensor.expand(n).clone()
        if tensor.numel() != n:
            raise ConfigError(f"got {tensor.numel()} labels for {n} samples")
        if tensor.min() < 0 or tensor.max() >= k:
            raise ConfigError(f"labels must be in 0..{k - 1} for model '{self.name}'")
        return tensor

    def generate(
        self, noise: SampleNoise, labels: torch.Tensor | None, **options: Any
    ) -> torch.Tensor:
        """Generate one batch of ``len(noise)`` images in ``[0, 1]`` (called by
        `sample` under ``torch.inference_mode``). Draw all randomness from ``noise``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- training
    def optimizer_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Parameters per optimizer, in the order the trainer steps them.

        Single-optimizer models return ``{"model": ...}``; a GAN returns
        ``{"discriminator": ..., "generator": ...}`` and its `training_loss` is
        called once per group with ``phase`` set to that name.
        """
        return {"model": self.parameters()}

    def optimizer_options(self, phase: str) -> dict[str, Any]:
        """Per-phase overrides of the optimizer settings (e.g. ``{"lr": 4e-4}``)."""
        return {}

    def training_epochs(self) -> int:
        """Passes over the data when the run names none (``genmnist train`` without
        ``--epochs``): the config's ``epochs`` field where it has one, else 10."""
        return getattr(self.config, "epochs", 10)

    def prepare_training(self, data: InMemoryDataset, resume: bool) -> None:
        """Called by the trainer on the training device before it builds the optimizers,
        the weight average and loads a checkpoint: compute what training needs from the
        whole training set (a DDPM's clusters), load what it needs besides the data (a
        distillation teacher) and set initial weights. Default: nothing.

        Args:
            data: The training split (``data.name`` is the dataset).
            resume: Whether a checkpoint will replace the weights (and buffers) next.
        """

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, step: int, phase: str = "model"
    ) -> dict[str, torch.Tensor]:
        """Loss of one batch, the hook the shared trainer calls.

        Args:
            images: ``(b, 1, 28, 28)`` floats in ``[0, 1]``.
            labels: ``(b,)`` class labels (ignored by unconditional models).
            step: Global optimizer step, for schedules such as KL annealing.
            phase: Which optimizer group is being stepped (see `optimizer_groups`).

        Returns:
            A dict with the scalar to minimise under ``"loss"`` and any other scalars to log.
        """
        raise NotImplementedError

    def finish_training(self, data: InMemoryDataset) -> None:
        """Called by the trainer once, when a run completes its last step, on the weights
        it exports (the weight average when there is one), before the last checkpoint:
        fit what is learned from a trained model (a VAE's mixture prior). Default:
        nothing.

        Args:
            data: The training split.
        """

    def training_metrics(self, step: int) -> dict[str, float]:
        """Extra numbers for the metrics log, computed at each logging interval (e.g. a
        GAN's sample diversity, to catch mode collapse early). Default: none."""
        return {}

    def training_warnings(self, metrics: dict[str, float]) -> dict[str, str]:
        """Warnings about a run read from one metrics record, by kind (e.g. a GAN's
        samples covering far less of the data than real images do: ``mode collapse``).
        The trainer shows each kind once, in the second half of a run, when two records
        in a row raise it, so the noise of a young model does not trip it. Default:
        none."""
        return {}

    # ----------------------------------------------------------------- export
    def export_network(self) -> ExportSpec:
        """The network that samples, as a plain module with example inputs and what they
        mean, for `genmnist.export.export_model` (``genmnist export``): a GAN's generator,
        a VAE's decoder, a diffusion model's U-Net. Default: none.

        Raises:
            ConfigError: the model has no single network to export.
        """
        raise ConfigError(
            f"model '{self.name}' has no network to export (export works for models that "
            "sample through one network: GANs, VAEs, DDPMs)"
        )

    def compile_networks(self, **options: Any) -> None:
        """Compile the networks training and sampling run, in place, with
        ``torch.compile`` (``options`` are its keyword arguments). The state dict keeps its
        names, so saving and loading are unchanged. Default: every child module, through
        `torch.nn.Module.compile`."""
        for child in self.children():
            child.compile(**options)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(
        self, directory: str | os.PathLike[str], dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if
        needed). Returns the folder.

        Args:
            directory: Target folder.
            dtype: Store floating-point weights in this dtype (e.g. ``torch.float16`` to
                halve the file); loading casts them back to the model's dtype.
        """
        directory = Path(directory)
        state = {
            k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
            for k, v in self.state_dict().items()
        }
        save_tensors(directory / WEIGHTS_FILE, state, {"model": self.name})
        write_json(directory / CONFIG_FILE, self.config_record())
        return directory

    def config_record(self) -> dict[str, Any]:
        """The contents of ``config.json``."""
        return {
            "format": CONFIG_FORMAT,
            "model": self.name,
            "config_version": self.config_version,
            "genmnist_version": __version__,
            "config": self.config.to_dict(),
        }

    @classmethod
    def migrate_config(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Upgrade a config dict saved with an older `config_version`."""
        return data

    @classmethod
    def migrate_weights(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the tensors of a weights file saved by an older version of the class to
        the names its state dict has now (the companion of `migrate_config`)."""
        return tensors

    @classmethod
    def from_pretrained(
        cls: type[M], name_or_path: str | os.PathLike[str], dataset: str = "mnist"
    ) -> M:
        """Load a model from a folder (``config.json`` + ``model.safetensors``) or, given a
        registered name, from the weights shipped for ``dataset``.

        Raises:
            CheckpointError: if the folder or shipped weights are missing or broken, or
                hold a model of another class.
        """
        from genmnist.models.loading import load

        model = load(name_or_path, dataset=dataset)
        if not isinstance(model, cls):
            raise CheckpointError(
                f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}"
            )
        return model

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a ``model.safetensors`` file into this model, checking names and shapes."""
        tensors, _ = load_tensors(path)
        tensors = self.migrate_weights(tensors)
        own = self.state_dict()
        check_same_tensors(
            {k: tuple(v.shape) for k, v in own.items()},
            {k: tuple(v.shape) for k, v in tensors.items()},
            path,
        )
        cast = {k: v.to(own[k].dtype) for k, v in tensors.items()}
        for key, value in cast.items():  # float64 beyond float32's range becomes inf here
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(
                    f"{path}: tensor '{key}' holds NaN or inf values as {own[key].dtype} "
                    "(values beyond the range of the model's dtype)"
                )
        self.load_state_dict(cast)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, parameters={self.num_parameters():,}"


def _check_model_class(obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, GenerativeModel)):
        raise TypeError(f"{obj!r} is not a subclass of genmnist.models.base.GenerativeModel")


MODELS.validate_with(_check_model_class)
