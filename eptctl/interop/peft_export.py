"""Export a ``pt`` adapter as a Hugging Face PEFT prompt-tuning adapter (PEFT's own file layout, written here).

    DIR/adapter_config.json        peft_type PROMPT_TUNING, task_type, num_virtual_tokens, token_dim, ...
    DIR/adapter_model.safetensors  one tensor, "prompt_embeddings" [num_virtual_tokens, token_dim]
    DIR/README.md                  what was exported, the backbone fingerprint, and what (if anything) was dropped

Why a ``pt`` prompt is exact: eptctl and PEFT both put the prompt rows before the token embeddings of the text, with
the attention mask set on them, and run the unchanged backbone on that (causal LMs and the encoder of seq2seq models;
PEFT's ``num_transformer_submodules`` is 1 so the decoder gets no prompt, as in eptctl). ``dept``/``ept`` adapters
also add a low-rank offset H[pos] to the embedding of every text token, and encoder adapters have a trained head on
the masked mean of prompt and text: PEFT's prompt tuning has neither. Fusion and projection are not the problem,
they are folded into the materialized prompt P_r.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.core.files import check_target, write_folder
from eptctl.engine import servable
from eptctl.methods import MaterializedAdapter

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PROMPT_KEY = "prompt_embeddings"  # what PEFT's prompt encoder saves and loads
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}
OFFSET_DROPPED = "the low-rank offset H = A·B added to the input embeddings"
HEAD_DROPPED = "the classification head on the masked mean of prompt and text"


@dataclass(frozen=True)
class PeftExport:
    record: object  # registry.AdapterRecord
    directory: Path
    config: dict  # what adapter_config.json holds
    dropped: list[str]  # parts of the adapter not in the export (only with lossy=True)


def export_peft(registry, ref, directory: str | Path, *, force: bool = False, lossy: bool = False) -> PeftExport:
    """Write the adapter ``ref`` names as a PEFT prompt-tuning adapter. Anything PEFT cannot represent is refused,
    unless ``lossy``: then only the materialized prompt P_r is written and the README says what was dropped."""
    rec = registry.resolve(ref)
    check_target(directory, force)
    tensors, meta = registry.load_servable(rec)
    adapter = MaterializedAdapter.from_tensors(tensors)
    family = _family(rec, adapter, meta)
    dropped = ([OFFSET_DROPPED] if adapter.offset is not None else []) + ([HEAD_DROPPED] if adapter.has_head else [])
    if dropped and not lossy:
        folded = " (fusion and projection are folded into the prompt and would be kept)" if rec.method == "ept" else ""
        raise EptctlError(
            f"adapter {rec.ref} ({rec.method}) has no exact PEFT form: PEFT prompt tuning has no equivalent of "
            f"{' or of '.join(dropped)}{folded}",
            hint="pass --lossy to export only the materialized prompt P_r, or export an eptctl bundle "
                 "(no --format) to keep everything",
        )
    prompt = adapter.prompt.detach().float().contiguous()  # [l, d]
    config = peft_config(rec, family, prompt.shape[0], prompt.shape[1])
    files = {
        CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        WEIGHTS_NAME: _weights(prompt, rec, dropped),
        "README.md": _readme(rec, config, dropped).encode(),
    }
    return PeftExport(rec, write_folder(directory, files, force=force), config, dropped)


def peft_config(rec, family: str, length: int, width: int) -> dict:
    """PEFT's PromptTuningConfig fields. Layers and heads stay null: PEFT fills them from the base model's config
    when it loads the adapter, and prompt tuning does not use them."""
    revision = rec.backbone.revision
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base_model_id(rec.backbone.name),
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": None,
        "num_layers": None,
        "num_transformer_submodules": 1,  # seq2seq: the prompt goes to the encoder only, as in eptctl
        "num_virtual_tokens": length,
        "peft_type": "PROMPT_TUNING",
        "prompt_tuning_init": "RANDOM",  # how it started does not matter once trained; RANDOM needs no tokenizer
        "prompt_tuning_init_text": None,
        "revision": revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None,  # hub commits only
        "task_type": TASK_TYPES[family],
        "token_dim": width,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }


def base_model_id(name: str) -> str:
    """The name PEFT should load the base model by: the hub id of an embedded model, else eptctl's name or path."""
    from eptctl.backbones import EMBEDDED, canonical_name

    m = EMBEDDED.get(canonical_name(name))
    return next((a for a in m.aliases if "/" in a), name) if m else name


def _family(rec, adapter: MaterializedAdapter, meta: dict[str, str]) -> str:
    family = servable.backbone_family(meta)
    if family is None and adapter.has_head:
        family = "encoder"
    if family not in TASK_TYPES:
        raise EptctlError(f"adapter {rec.ref}: its servable file does not say which model family it is for",
                          hint="re-register the adapter with this eptctl")
    return family


def _weights(prompt, rec, dropped: list[str]) -> bytes:
    from safetensors.torch import save

    meta = {"format": "pt", "eptctl.adapter_id": rec.id, "eptctl.method": rec.method,
            "eptctl.embedding_sha256": rec.backbone.embedding_sha256}
    if dropped:
        meta["eptctl.lossy"] = "dropped: " + "; ".join(dropped)
    return save({PROMPT_KEY: prompt}, meta)


def _readme(rec, config: dict, dropped: list[str]) -> str:
    b = rec.backbone
    lines = [f"# PEFT prompt-tuning export of {rec.ref}", "",
             f"eptctl adapter `{rec.id}` ({rec.method}, task `{rec.task}`): {config['num_virtual_tokens']} virtual "
             f"tokens of width {config['token_dim']}, task type {config['task_type']}.", ""]
    if dropped:
        lines += ["**Lossy export.** Dropped: " + "; ".join(dropped) + ". Only the materialized prompt P_r is here, "
                  "so this PEFT adapter does not reproduce the eptctl adapter's predictions; the eptctl bundle "
                  "(`eptctl export REF DIR`) keeps everything.", ""]
    lines += [f"Base model: `{config['base_model_name_or_path']}`. The prompt only fits the exact weights it was "
              f"trained on: eptctl backbone `{b.name}` (revision {b.revision or '-'}), input-embedding sha256 "
              f"`{b.embedding_sha256}`. Check yours before trusting the outputs.", ""]
    if b.name != config["base_model_name_or_path"]:
        lines += ["The embedded eptctl backbone is de-quantised from a GGUF file, so its weights differ slightly "
                  "from the hub checkpoint of the same name.", ""]
    lines += ["```python", "from peft import PeftModel", "",
              "model = PeftModel.from_pretrained(base_model, PATH)  # base_model: the backbone above, loaded with "
              "transformers", "```", "",
              "The prompt is prepended to the token embeddings of the text (PEFT's logits include the "
              f"{config['num_virtual_tokens']} virtual positions first). eptctl scores labels by the log-likelihood "
              "of each label's answer after the task template; build the same text to get the same scores."]
    return "\n".join(lines) + "\n"
