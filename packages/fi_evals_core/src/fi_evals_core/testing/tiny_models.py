"""Tiny, randomly initialised Hugging Face models and a locally trained tokenizer.

Why: tests must run with no access to the Hugging Face Hub, yet they should exercise the real
``transformers`` / ``tokenizers`` code paths (real token ids, real chat templates, real ``generate``).
Everything is built from scratch in a few seconds and saved with ``save_pretrained`` so that
``AutoTokenizer`` / ``AutoModelFor*`` / ``pipeline`` can load it from a plain directory.

The Llama shape (hidden 128, 2 layers, 4 heads, 2 KV heads, intermediate 256, 512 positions) is the one
vLLM's CPU backend is expected to accept later, so keep it stable.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch, tokenizers and transformers are imported where a model is built
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "PAD_TOKEN",
    "ROLE_TOKENS",
    "CHAT_TEMPLATE",
    "VOCAB_SIZE",
    "synthetic_corpus",
    "build_tokenizer",
    "build_gpt2",
    "build_llama",
    "build_llama_lora",
    "build_t5",
]

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
UNK_TOKEN = "<|unk|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
#: Target BPE vocabulary size (specials included); the final tokenizer has exactly this many entries.
VOCAB_SIZE = 768

#: Simple role-tagged template. ``content`` may be a string or a list of OpenAI-style parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)

_SUBJECTS = [
    "the cat", "a dog", "my friend", "the model", "our team", "the teacher", "a small bird", "the robot",
    "this city", "the old man", "a young girl", "the server", "every student", "the river", "the company",
    "she", "he", "they", "we", "you", "I", "the scientist", "a farmer", "the engineer", "the musician",
]
_VERBS = [
    "sees", "likes", "finds", "builds", "reads", "writes", "answers", "opens", "closes", "moves",
    "carries", "follows", "watches", "helps", "calls", "learns", "teaches", "tests", "sends", "makes",
    "walked to", "looked at", "talked about", "thought about", "waited for", "asked about",
]
_OBJECTS = [
    "the door", "a book", "the answer", "a question", "the garden", "the window", "a letter", "the song",
    "the request", "the token", "a red apple", "the blue sky", "the long road", "a quiet house", "the code",
    "the report", "a new idea", "the weather", "the market", "a warm cup of tea", "the small box",
]
_ADVERBS = ["quickly", "slowly", "today", "again", "carefully", "often", "never", "always", "quietly", "later"]
_QUESTIONS = [
    "What is the capital of France?", "How are you today?", "Can you help me?", "What time is it?",
    "Why is the sky blue?", "Where is the library?", "Who wrote this book?", "Tell me a story.",
    "What is machine learning?", "How does a tokenizer work?", "Say hello to the world.",
]
_ANSWERS = [
    "The capital of France is Paris.", "I am fine, thank you.", "Yes, I can help you with that.",
    "It is ten o'clock.", "The sky is blue because of light scattering.", "The library is on the left.",
    "A famous writer wrote it.", "Once upon a time there was a small robot.", "Hello, world!",
    "Machine learning lets computers learn from data.", "A tokenizer splits text into tokens.",
]


def synthetic_corpus(n_sentences: int = 3000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English corpus: enough variety for a ~768-entry byte-level BPE."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_sentences):
        kind = i % 5
        if kind == 0:
            lines.append(rng.choice(_QUESTIONS) + " " + rng.choice(_ANSWERS))
        elif kind == 1:
            lines.append(f"There are {rng.randint(0, 999)} items and {rng.randint(0, 99)} boxes, {rng.choice(_ADVERBS)}.")
        else:
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ADVERBS)}."
            lines.append(s[0].upper() + s[1:])
    return lines


def _iter_corpus() -> Iterator[str]:
    yield from synthetic_corpus()


def build_tokenizer(dirpath: str | os.PathLike[str], *, add_bos: bool = True, add_eos: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on :func:`synthetic_corpus`, wrap it for ``transformers`` and save it to ``dirpath``.

    Special tokens: bos ``<|bos|>`` (id 0), eos ``<|eos|>`` (1), unk ``<|unk|>`` (2), pad ``<|pad|>`` (3) and the
    chat role markers. ``add_bos``/``add_eos`` control what plain ``tokenizer(text)`` adds (Llama-style: bos only;
    T5-style: eos only); the chat template always writes the bos token itself, so render it with
    ``add_special_tokens=False`` (as ``apply_chat_template(tokenize=True)`` does).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    specials = [BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, PAD_TOKEN, *ROLE_TOKENS]

    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_iter_corpus(), trainer=trainer)

    single = "$A:0"
    pair = "$A:0 $B:1"
    if add_bos:
        single, pair = f"{BOS_TOKEN}:0 {single}", f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1"
    if add_eos:
        single, pair = f"{single} {EOS_TOKEN}:0", f"{pair} {EOS_TOKEN}:1"
    special_ids = [(t, tok.token_to_id(t)) for t in (BOS_TOKEN, EOS_TOKEN)]
    tok.post_processor = processors.Sequence(
        [processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_ids)]
    )

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
        padding_side="left",  # decoder-only batch generation wants left padding
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(dirpath)
    _make_tokenizer_config_portable(dirpath)
    return hf_tok


def _make_tokenizer_config_portable(dirpath: Path) -> None:
    """Rewrite tokenizer_config.json so transformers 4.x (e.g. a vLLM environment) can load it too.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` and a list-valued ``extra_special_tokens``,
    which 4.x does not understand; ``PreTrainedTokenizerFast`` / ``additional_special_tokens`` load in both.
    The chat template is also inlined (older readers ignore ``chat_template.jinja``).
    """
    cfg_path = dirpath / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    elif extra:
        cfg["extra_special_tokens"] = extra
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _generation_config(tok: PreTrainedTokenizerFast, **extra: object) -> GenerationConfig:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
        **extra,
    )


def _finish(model: torch.nn.Module, tok: PreTrainedTokenizerFast, dirpath: Path, gen: GenerationConfig) -> Path:
    model.generation_config = gen
    model.eval()
    model.save_pretrained(dirpath)
    # tokenizer.save_pretrained wrote tokenizer files already; model.save_pretrained does not touch them.
    return dirpath


def build_gpt2(dirpath: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Tiny GPT-2 (64 hidden, 2 layers, 2 heads) + tokenizer saved in ``dirpath``; returns the path."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    dirpath = Path(dirpath)
    tok = build_tokenizer(dirpath)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    # GPT-2 ties lm_head to the input embeddings, so a fresh model greedily repeats its last input token.
    # A random final LayerNorm scale breaks that symmetry (same trick as build_t5) for more varied text.
    with torch.no_grad():
        model.transformer.ln_f.weight.normal_()
    return _finish(model, tok, dirpath, _generation_config(tok))


def build_llama(dirpath: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Tiny Llama (the vLLM-CPU-compatible shape described in the module docstring) + tokenizer; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dirpath = Path(dirpath)
    tok = build_tokenizer(dirpath)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    return _finish(model, tok, dirpath, _generation_config(tok))


def build_llama_lora(dirpath: str | os.PathLike[str], base_dir: str | os.PathLike[str], *, rank: int = 8,
                     alpha: int = 16, target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
                     seed: int = 1) -> Path:
    """A random LoRA adapter for the Llama in ``base_dir`` (see `build_llama`), in PEFT's on-disk format
    (``adapter_config.json``, ``adapter_model.safetensors``) as vLLM's LoRA loader and PEFT read it;
    returns the path. Both factors are random and non-zero (a freshly initialised PEFT adapter has
    B = 0 and changes nothing), so the adapter changes the model's logits."""
    import torch
    from safetensors.torch import save_file

    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(base_dir) / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    shapes = {  # module -> (in features, out features), as in transformers' LlamaAttention / LlamaMLP
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, config["intermediate_size"]),
        "up_proj": (hidden, config["intermediate_size"]), "down_proj": (config["intermediate_size"], hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in target_modules:
            block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            in_features, out_features = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) / in_features**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.5
    save_file(tensors, str(dirpath / "adapter_model.safetensors"))
    (dirpath / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_dir),
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": list(target_modules),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None,
    }, indent=2))
    return dirpath


def build_t5(dirpath: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Tiny T5 encoder-decoder (d_model 64) + T5-style tokenizer (appends eos, no bos); returns the path.

    ``decoder_start_token_id`` is the pad token, as in real T5 checkpoints.
    """
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    dirpath = Path(dirpath)
    tok = build_tokenizer(dirpath, add_bos=False, add_eos=True)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="relu",
        is_encoder_decoder=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    # With tied embeddings a freshly initialised T5 just echoes its start (pad) token forever, so decoding is
    # empty after skip_special_tokens. Randomising the decoder's final RMSNorm scale breaks that symmetry while
    # keeping the standard (tied) checkpoint layout. (transformers 5 forces tie_word_embeddings for T5 anyway.)
    with torch.no_grad():
        model.decoder.final_layer_norm.weight.normal_()
    gen = _generation_config(tok, decoder_start_token_id=tok.pad_token_id)
    return _finish(model, tok, dirpath, gen)


# manual smoke run: python -m fi_evals_core.testing.tiny_models OUTDIR
if __name__ == "__main__":  # pragma: no cover
    import sys
    import time

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")
    for name, fn in (("gpt2", build_gpt2), ("llama", build_llama), ("t5", build_t5)):
        t0 = time.perf_counter()
        path = fn(out / name)
        print(name, path, f"{time.perf_counter() - t0:.2f}s", json.dumps(sorted(os.listdir(path))))
