"""``eptctl engine vllm prepare``: a model folder vLLM can load, and the command that serves it.

vLLM loads a plain Hugging Face folder. eptctl's embedded SmolLM2 is converted from a GGUF file, and the converted
``config.json`` keeps the GGUF ``quantization_config``, which would make vLLM look for a GGUF file: the prepared
folder has the same safetensors and tokenizer files (hard links where the file system allows, else copies) and a
config without it. ``eptctl-backbone.json`` records the backbone's fingerprint (what adapters are tied to), so a
user can see which backbone a folder serves.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.core.files import check_target, staged_folder

FINGERPRINT_FILE = "eptctl-backbone.json"
# Weight formats vLLM does not need beside the safetensors (and a GGUF one would confuse its loader).
SKIPPED_SUFFIXES = (".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
CONFIG_KEYS_DROPPED = ("quantization_config",)
DEFAULT_PORT = 8100
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_KV_CACHE = "2G"  # SmolLM2-135M in fp32: 46 KB per token, so about 45,000 tokens in flight


@dataclass(frozen=True)
class Prepared:
    """A prepared folder: where, the name vLLM should serve it under (eptctl's backbone name, which ``eptctl serve
    --engine vllm`` asks for by default), the backbone's fingerprint, and the command that serves it."""

    path: Path
    served_name: str
    fingerprint: dict
    command: tuple[str, ...]

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def serve_command(path: Path, served_name: str, python: str = "python", port: int = DEFAULT_PORT,
                  max_model_len: int = DEFAULT_MAX_MODEL_LEN, kv_cache: str = DEFAULT_KV_CACHE,
                  dtype: str = "float32") -> tuple[str, ...]:
    """vLLM's OpenAI server on ``path`` with prompt embeddings on, in ``dtype`` (float32: what eptctl's equality
    checks use; bfloat16 on a GPU or a CPU with bf16 units), eager mode (no compile step, so it is ready sooner on a CPU) and a fixed
    key/value cache of ``kv_cache`` bytes (vLLM's CPU backend otherwise reserves 92 % of the machine's memory, and
    refuses to start where that is not free; on a GPU replace it with --gpu-memory-utilization)."""
    return (python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--served-model-name",
            served_name, "--enable-prompt-embeds", "--dtype", dtype, "--max-model-len", str(max_model_len),
            "--enforce-eager", "--kv-cache-memory-bytes", kv_cache, "--host", "127.0.0.1", "--port", str(port))


def prepare(model: str, target: str | Path, force: bool = False, python: str = "python") -> Prepared:
    """Write the folder vLLM loads for backbone ``model`` (an embedded name or a local folder) to ``target``.
    Raises ``EptctlError`` for a target that is not new or empty (unless ``force``), an encoder or seq2seq model, a
    model that is not on this machine, or an OS error while writing."""
    from eptctl import backbones
    from eptctl.serving.engines.embedding import load_embedding_backbone

    path = check_target(target, force)
    backbone = load_embedding_backbone(model)  # refuses encoders and seq2seq; converts an embedded GGUF once
    source = Path(backbones.resolve_source(model)[0])
    fingerprint = {k: v for k, v in backbone.fingerprint().items() if k != "max_length"}
    try:
        with staged_folder(path, replace=True) as staging:
            for item in sorted(source.iterdir()):
                if item.is_file() and item.name != "config.json" and not item.name.endswith(SKIPPED_SUFFIXES):
                    _link_or_copy(item, staging / item.name)
            config = json.loads((source / "config.json").read_text())
            for key in CONFIG_KEYS_DROPPED:
                config.pop(key, None)
            (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (staging / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    except OSError as err:
        raise EptctlError(f"cannot write to {path}: {err.strerror}",
                          hint="check the free space and permissions") from None
    return Prepared(path.absolute(), backbone.name, fingerprint, serve_command(path.absolute(), backbone.name, python))


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no second copy of the weights) where source and target share a file system, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
