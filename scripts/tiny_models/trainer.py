"""Tiny random-weight JoyCaption-shaped model for the diffusion-pipe-trainer image.

Writes `<out_dir>/llama-joycaption-beta-one-hf-llava/`, the folder name the worker uses in
the volume's `models/` dir: a `LlavaForConditionalGeneration` (Llama text model + SigLIP
vision tower, as in `fancyfeast/llama-joycaption-beta-one-hf-llava`) with a `LlavaProcessor`
(SigLIP image processor + a word-level tokenizer with the Llama 3 chat tokens and template),
all built locally: nothing is downloaded. A `.complete` marker makes it count as fetched.
"""

from __future__ import annotations

from pathlib import Path

from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR

_SPECIAL = ["<pad>", "<unk>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<image>"]
_WORDS = (
    "a an the person woman man dog cat car tree house street field sky cloud light shadow red green blue "
    "black white yellow wearing standing sitting walking holding looking smiling under over near behind in "
    "on with and of is are photo portrait close-up wide shot background foreground bright dark soft warm "
    "cool sunny evening morning night indoor outdoor grass water river mountain city road window door table "
    "chair face hair eyes hand jacket shirt dress hat glasses camera lens view scene style detailed texture "
    "system user assistant you helpful image captioner write description for this words or less , . :"
).split()
# Llama 3 chat format, as JoyCaption's processor applies it.
_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|> ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image> ' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ ' <|eot_id|> ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|> ' }}{% endif %}"
)
IMAGE_SIZE = 32
PATCH = 8


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word pieces with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<image>"],
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build(out_dir: Path) -> Path:
    import torch
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    target = Path(out_dir) / JOYCAPTION_DIR
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    num_patches = (IMAGE_SIZE // PATCH) ** 2
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=IMAGE_SIZE, patch_size=PATCH,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-2,
        image_seq_length=num_patches,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy="full", chat_template=_CHAT_TEMPLATE, image_token="<image>",
        num_additional_image_tokens=0,
    )
    processor.save_pretrained(target)
    (target / ".complete").write_text("tiny random-weight model built by scripts/tiny_models/trainer.py\n")
    return target
