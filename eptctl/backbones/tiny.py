"""Tiny, randomly initialised backbones with an offline byte-level tokenizer, for tests and benchmarks.

They load in milliseconds, need no download, and are deterministic (fixed seed), so an adapter trained on
``tiny-random-llama`` in one process matches the backbone fingerprint in the next.
"""

from __future__ import annotations

TINY_SEED = 1234
# name -> (family, config builder key)
TINY_MODELS = {
    "tiny-random-llama": "causal",
    "tiny-random-t5": "seq2seq",
    "tiny-random-bert": "encoder",
}
# Larger random shapes for benchmarks (never trained for accuracy; too slow for tests).
SHAPED_MODELS = {
    "random-t5-small": "seq2seq",
    "random-t5-base": "seq2seq",
    "random-llama-1b": "causal",
}


def byte_tokenizer(family: str):
    """A byte-level tokenizer: every byte is a token, so any text encodes, and nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = {"causal": ["<pad>", "<s>", "</s>"], "seq2seq": ["<pad>", "</s>", "<unk>"], "encoder": [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}[family]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    # Like real BPE vocabularies, " word" starts with one space-prefixed token, so answers differ in their first token.
    merges = [("Ġ", ch) for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if family == "seq2seq":  # T5 appends </s> to every sequence
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if family == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


TINY_INIT_RANGE = 0.2  # larger than HF's 0.02 so the random features carry enough signal for prompts to learn


def _config(name: str, vocab_size: int):
    from transformers import BertConfig, LlamaConfig, T5Config

    if name == "tiny-random-llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
                           initializer_range=TINY_INIT_RANGE)
    if name == "random-llama-1b":  # Llama-3.2-1B shape
        return LlamaConfig(vocab_size=vocab_size, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    if name == "tiny-random-t5":
        return T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if name in ("random-t5-small", "random-t5-base"):
        size = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8) if name.endswith("small") else dict(
            d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
        return T5Config(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **size)
    if name == "tiny-random-bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=1024, pad_token_id=0)
    raise KeyError(name)


def build_random(name: str):
    """Returns (model, tokenizer, family) for a tiny or shaped random backbone, deterministic across processes."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    family = TINY_MODELS.get(name) or SHAPED_MODELS[name]
    tokenizer = byte_tokenizer(family)
    config = _config(name, vocab_size=len(tokenizer))
    auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = auto.from_config(config)
    return model, tokenizer, family
