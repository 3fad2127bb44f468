"""Greedy generation with onnxruntime alone, from a folder written by ``encslim export --format onnx``.

Needs onnxruntime, numpy, Pillow and tokenizers; never imports torch or transformers::

    python -m encslim.export.ort_generate DIR --image cat.png --prompt "What is in the image?"

or from Python::

    from encslim.export.ort_generate import OrtVlm
    vlm = OrtVlm("DIR")
    tokens = vlm.generate([image], ["What is in the image?"], max_new_tokens=16)
    print(vlm.decode(tokens))

Preprocessing is the native processor's (resize bicubic to each slot's size, scale, normalise),
tokenization is the folder's ``tokenizer.json``, the ``<image>`` placeholder is expanded to the
image token count, prompts are left-padded, and decoding is greedy with the key/value cache.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ONNX_CONFIG = "onnx_config.json"


class OrtVlm:
    """An exported native model on onnxruntime sessions.

    Args:
        folder: a folder written by ``export_onnx``.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, folder, threads=None, providers=("CPUExecutionProvider",)):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        config_path = self.folder / ONNX_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} holds no {ONNX_CONFIG}; export it with `encslim export --format onnx`")
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        graphs = self.config["graphs"]
        self.sessions = {name: ort.InferenceSession(str(self.folder / file), options, providers=list(providers))
                         for name, file in graphs.items()}
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))

    # ------------------------------------------------------------------ inputs
    def pixel_values(self, images):
        """``{pixel_values_<slot>: float32 (B, 3, S, S)}`` exactly as the native processor makes them."""
        from PIL import Image

        rgb = [_rgb(image) for image in images]
        out = {}
        for slot in self.config["slots"]:
            size = slot["image_size"]
            mean = np.asarray(slot["image_mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(slot["image_std"], dtype=np.float32)[:, None, None]
            arrays = []
            for img in rgb:
                resized = img.resize((size, size), Image.BICUBIC) if img.size != (size, size) else img
                arrays.append((np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std)
            out[slot["input"]] = np.stack(arrays)
        return out

    def build_prompt(self, question):
        """The chat prompt the native processor builds: image placeholder first, then the question."""
        return self.config["prompt_template"].format(prompt=f"{self.config['image_token']}\n{question}")

    def tokenize(self, prompts):
        """Left-padded ``(input_ids, attention_mask)`` int64, ``<image>`` expanded to the image tokens."""
        token = self.config["image_token"]
        texts = [p.replace(token, token * self.config["num_image_tokens"]) for p in prompts]
        encoded = [self.tokenizer.encode(t).ids for t in texts]
        width = max(len(ids) for ids in encoded)
        ids = np.full((len(encoded), width), self.config["pad_token_id"], dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, seq in enumerate(encoded):
            ids[row, width - len(seq):] = seq
            mask[row, width - len(seq):] = 1
        return ids, mask

    def prompt_embeds(self, images, input_ids):
        """Token embeddings with the image embeddings written over the ``<image>`` positions."""
        embeds = self.sessions["embed_tokens"].run(None, {"input_ids": input_ids})[0]
        image = self.sessions["vision"].run(None, self.pixel_values(images))[0]
        positions = input_ids == self.config["image_token_id"]
        if int(positions.sum()) != image.shape[0] * image.shape[1]:
            raise ValueError(f"the prompts hold {int(positions.sum())} image tokens but the images give "
                             f"{image.shape[0] * image.shape[1]}; put one <image> in each prompt")
        embeds[positions] = image.reshape(-1, image.shape[-1])
        return embeds

    # ------------------------------------------------------------------ decoding
    def empty_past(self, batch):
        cfg = self.config
        shape = (batch, cfg["num_kv_heads"], 0, cfg["head_dim"])
        return {name: np.zeros(shape, dtype=np.float32) for name in cfg["decoder_past_inputs"]}

    def step(self, inputs_embeds, attention_mask, past):
        """One decoder run: ``(logits, present dict keyed by the next step's past input names)``."""
        feed = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, **past}
        logits, *present = self.sessions["decoder"].run(None, feed)
        return logits, dict(zip(self.config["decoder_past_inputs"], present))

    def generate(self, images, questions, max_new_tokens=16, chat=True):
        """Greedy tokens (one list per prompt; ``pad`` after a row's end-of-sequence, as transformers does).

        Args:
            images: one PIL image (or path) per prompt.
            questions: questions (wrapped in the chat template when ``chat``) or full prompts with ``<image>``.
            max_new_tokens: tokens to generate at most.
            chat: wrap each question with :meth:`build_prompt`.
        """
        prompts = [self.build_prompt(q) if chat else q for q in questions]
        input_ids, mask = self.tokenize(prompts)
        embeds = self.prompt_embeds(images, input_ids)
        past = self.empty_past(len(prompts))
        eos, pad = set(self.config["eos_token_id"]), self.config["pad_token_id"]
        unfinished = np.ones(len(prompts), dtype=bool)
        generated = []
        for _ in range(max_new_tokens):
            logits, past = self.step(embeds, mask, past)
            tokens = np.where(unfinished, logits[:, -1].argmax(-1), pad).astype(np.int64)
            generated.append(tokens)
            unfinished &= ~np.isin(tokens, list(eos))
            if not unfinished.any():
                break
            embeds = self.sessions["embed_tokens"].run(None, {"input_ids": tokens[:, None]})[0]
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
        return np.stack(generated, axis=1).tolist() if generated else [[] for _ in prompts]

    def decode(self, tokens):
        """Texts of token lists, special tokens skipped."""
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in tokens]


def _rgb(image):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return img.convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def main(argv=None):
    """Command line: generate an answer for one image and one or more prompts."""
    parser = argparse.ArgumentParser(prog="python -m encslim.export.ort_generate", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a folder written by `encslim export --format onnx`")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--prompt", action="append", required=True, help="question (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--raw", action="store_true", help="prompts are full prompts with <image>, no chat template")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print tokens and texts as JSON")
    args = parser.parse_args(argv)
    try:
        vlm = OrtVlm(args.folder, threads=args.threads)
        tokens = vlm.generate([args.image] * len(args.prompt), args.prompt, args.max_new_tokens, chat=not args.raw)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    texts = vlm.decode(tokens)
    if args.json:
        print(json.dumps({"tokens": tokens, "texts": texts}))
    else:
        for text in texts:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
