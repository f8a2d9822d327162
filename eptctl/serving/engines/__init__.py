"""Engines that run the frozen backbone outside eptctl's process (``serving.engine`` defines the interface).

``vllm``: a vLLM server reached over HTTP; eptctl keeps the tokenizer, the input-embedding table (``embedding``) and
the adapters, and sends each row's ``[P_r; E(x) + H]`` as ``prompt_embeds`` (``vllm_http``). ``prepare`` writes the
model folder vLLM loads. eptctl never imports vllm: it lives in its own environment (``./setup.sh --with-vllm``).
"""
