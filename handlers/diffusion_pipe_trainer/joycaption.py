"""JoyCaption image captioning, run as a child process so its GPU memory is gone before training.

    python -m handlers.diffusion_pipe_trainer.joycaption --model DIR [--prompt P] < files.json

Reads a JSON list of image paths on stdin and prints one JSON line per image,
`{"file": path, "caption": text}` (or `{"file", "error"}`), as soon as its batch is done.
Loading follows the model card: `AutoProcessor(use_fast=False)`, `LlavaForConditionalGeneration`
in bf16 on the GPU; generation `do_sample=True, temperature=0.6, top_p=0.9`.
"""

from __future__ import annotations

import argparse
import json
import sys

SYSTEM_PROMPT = "You are a helpful image captioner."
DEFAULT_PROMPT = "Write a detailed description for this image in 50 words or less."
TEMPERATURE = 0.6
TOP_P = 0.9
EMPTY_RETRIES = 3


def build_prompt(base: str | None, trigger: str | None) -> str:
    prompt = base or DEFAULT_PROMPT
    if trigger:
        prompt += f" If there is a person/character in the image you must refer to them as {trigger}."
    return prompt


def caption_batches(model_dir: str, files: list[str], prompt: str, *, batch_size: int, max_new_tokens: int,
                    seed: int | None = None):
    """Yield (file, caption) per image, batch by batch."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if seed is not None:
        torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir, use_fast=False)
    processor.tokenizer.padding_side = "left"
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    convo = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    text = processor.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    if "<image>" not in text:  # the model card's template adds the image token itself; ours may not
        text = text.replace(prompt, "<image> " + prompt, 1)
    def generate(batch: list[str]) -> list[str]:
        images = []
        for f in batch:
            with Image.open(f) as im:
                images.append(im.convert("RGB"))
        inputs = processor(text=[text] * len(batch), images=images, return_tensors="pt", padding=True).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE,
                                 top_p=TOP_P, top_k=None, use_cache=True)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [processor.tokenizer.decode(toks, skip_special_tokens=True).strip() for toks in new_tokens]

    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        results = dict(zip(batch, generate(batch), strict=True))
        for _retry in range(EMPTY_RETRIES):  # sampling can end at once; ask again rather than train captionless
            empty = [f for f in batch if not results[f]]
            if not empty:
                break
            results.update(zip(empty, generate(empty), strict=True))
        for f in batch:
            yield f, results[f]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    files = json.load(sys.stdin)
    for f, caption in caption_batches(args.model, files, args.prompt, batch_size=args.batch_size,
                                      max_new_tokens=args.max_new_tokens, seed=args.seed):
        print(json.dumps({"file": f, "caption": caption}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
