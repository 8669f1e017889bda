"""Tiny randomly initialised models and tokenizers, built offline in a second.

Unit tests and smoke runs use these instead of downloading anything. The tokenizer is
a byte-level BPE trained on a small built-in corpus, so it behaves like a real one
(merges, special tokens, offsets) while staying small.
"""
from __future__ import annotations

import functools

from alignkit.models.templates import TEMPLATES

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]"]

_CORPUS = """The quick brown fox jumps over the lazy dog. A user asks a question and the assistant answers it.
What is the capital of France? Paris is the capital of France. Answer in JSON: {"answer": "Paris"}.
Please reply in lowercase letters only. Sure, here are three bullet points: * one * two * three.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 plus minus times equals. system user assistant hello world.
Translate, summarise, explain, list, write a poem about the sea. Good bad chosen rejected reward.
"""


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(template: str = "chatml"):
    """A small fast tokenizer with the chat template named by `template` (chatml, llama3, inst).

    Like the real families, the llama3 and inst tokenizers add a BOS when encoding text while
    their templates render one too: the trap that doubles BOS in careless pipelines.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    eos = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "inst": "</s>"}[template]
    backend = Tokenizer.from_str(_tokenizer_json())
    if template != "chatml":
        bos_id = backend.token_to_id("<s>")
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend,
                                 bos_token="<s>", eos_token=eos, pad_token="<pad>")
    tok.chat_template = TEMPLATES[template]
    return tok


def tiny_model(tokenizer=None, *, layers: int = 2, hidden: int = 64, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised Llama-architecture causal LM sized for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 512)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=getattr(tokenizer, "bos_token_id", 1),
                         eos_token_id=getattr(tokenizer, "eos_token_id", 2),
                         pad_token_id=getattr(tokenizer, "pad_token_id", 0))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model
