"""vLLM's chat API renders a native folder's own chat template (chat_template.jinja, written with the processor):
one user turn with an image becomes exactly the prompt encslim's processor builds, token for token, with no
``--chat-template`` given. ``LLM.chat`` applies the template as the OpenAI server does (its engine in the script's
process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, vLLM imported once)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import write_tiny_native

QUESTION = "What colour is the square? Answer with one word."
SCRIPT = '''
import base64, json, os, sys


def main():
    from vllm import LLM, SamplingParams

    folder, image, out, question = sys.argv[1:5]
    llm = LLM(model=folder, dtype="float32", max_model_len=256, seed=0, enforce_eager=True,
              limit_mm_per_prompt={"image": 1})
    url = "data:image/png;base64," + base64.b64encode(open(image, "rb").read()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    result = llm.chat([{"role": "user", "content": content}], SamplingParams(temperature=0.0, max_tokens=1))[0]
    with open(out, "w") as f:
        json.dump({"prompt_token_ids": list(result.prompt_token_ids)}, f)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    main()
'''


@pytest.mark.slow
def test_vllm_chat_renders_the_processors_prompt(tmp_path, non_square_png):
    from PIL import Image

    from encslim.models.families.native.processing import EncslimProcessor

    folder = write_tiny_native(tmp_path / "model", ("clip", "siglip"))
    assert (folder / "chat_template.jinja").is_file()
    processor = EncslimProcessor.from_pretrained(folder)
    expected = processor(text=[processor.build_prompt(QUESTION)], images=[Image.open(non_square_png)])
    (tmp_path / "chat.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(tmp_path / "chat.py"), str(folder), str(non_square_png),
                           str(tmp_path / "out.json"), QUESTION], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert done.returncode == 0, f"vLLM chat failed:\n{done.stderr[-4000:]}"
    got = json.loads((tmp_path / "out.json").read_text())["prompt_token_ids"]
    assert got == expected["input_ids"][0].tolist()
    assert got.count(processor.image_token_id) == processor.num_image_tokens()
