"""Runs one greedy request through vLLM's offline engine and writes tokens and logprobs as JSON.

Not a test: the tests call :func:`run` in a subprocess (``run_offline_in_one_process`` in
tests/serving/test_vllm_llava.py), in the vLLM venv, once per folder; it also runs as a script.

Usage: python vllm_offline.py FOLDER REQUEST.json OUT.json
REQUEST.json: {"prompt": str, "image": PNG path, "max_tokens": int, "mm_processor_kwargs": dict,
              optional "max_model_len": int (256), "hf_overrides": dict (vLLM's --hf-overrides)}
OUT.json: {"prompt_token_ids", "prompt_logprobs" (None first), "token_ids", "logprobs"}
"""

import json
import os
import sys


def run(folder, request):
    """The engine's greedy answer to ``request`` (see the module docstring) as plain lists."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", max_model_len=request.get("max_model_len", 256), seed=0,
              enforce_eager=True, mm_processor_kwargs=request["mm_processor_kwargs"], limit_mm_per_prompt={"image": 1},
              hf_overrides=request.get("hf_overrides"))
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True, logprobs=0,
                            prompt_logprobs=0)
    image = Image.open(request["image"]).convert("RGB")
    out = llm.generate({"prompt": request["prompt"], "multi_modal_data": {"image": image}}, params)[0]
    ids, tokens = out.prompt_token_ids, out.outputs[0].token_ids
    return {
        "prompt_token_ids": list(ids),
        "prompt_logprobs": [None] + [lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:])],
        "token_ids": list(tokens),
        "logprobs": [lp[t].logprob for t, lp in zip(tokens, out.outputs[0].logprobs)],
    }


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    folder, request_path, out_path = sys.argv[1:4]
    with open(request_path, encoding="utf-8") as f:
        result = run(folder, json.load(f))
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
