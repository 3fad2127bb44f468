"""Golden outputs of Eagle2 (nvidia/Eagle2-9B's MOB model) as its ORIGINAL code computes them (transformers 4.37.2).

Assembles the original remote-code package (README.md beside this file says where each file comes from:
three texts out of the public-code index, checked by sha256, the rest from NVlabs/Eagle at a pinned
commit), builds a small random ``Eagle2ChatModel`` with it (SigLIP at 448 + ConvNeXt at 512, pixel shuffle
0.5, LayerNorm-first ``mlp1``, Qwen2), saves it with the original's ``save_pretrained`` and records, on the
7 tiles of ``tiles/image_800x600.png`` (the original's own preprocessing, ``tiles/golden.safetensors``):
each tower's output, and the logits of the full model and of each single-tower zero mask, with the
prompt built as ``Eagle2ChatModel.chat`` builds it. Run in its own venv, never in CI:

    cd tests/parity/eagle2   # INDEX: the three index texts; GIT: a git dir of NVlabs/Eagle
    /tmp/venv437/bin/python make_model_golden.py build INDEX GIT mob
    /tmp/venv437/bin/python make_model_golden.py load INDEX GIT <folder> mob

``load`` opens a folder (an ``encslim prune`` output) with the original ``Eagle2ChatModel.from_pretrained``
and prints what happens: the refusal, or its logits against the golden's zero-mask logits.
"""

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import traceback
import typing
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
EAGLE_COMMIT = "783f656d127ee498137b5ff52603ce36c292d317"  # NVlabs/Eagle main, 2025-10 ("update citation")
# the texts found in the public-code index: (find_string query, read_file id); sha256 in original_files.json
INDEX_FILES = {
    "modeling_eagle_chat.py": ("class Eagle2ChatModel", "334094437"),
    "configuration_eagle2.py": ("class Eagle2ChatConfig(PretrainedConfig)", "1202251200"),
    "multi_backbone_channel_concatenation_encoder.py": ("from .siglip_vision_tower import SiglipVisionTower",
                                                        "1157037724"),
}
PINNED = {  # NVlabs/Eagle at EAGLE_COMMIT, Eagle2.5's copies of the files Eagle2-9B's remote code names
    "convnext_encoder.py": "Eagle2_5/eaglevl/model/multimodal_encoder/convnext_encoder.py",
    "convnext.py": "Eagle2_5/eaglevl/model/multimodal_encoder/convnext.py",
    "siglip_vision_tower.py": "Eagle2_5/eaglevl/model/multimodal_encoder/siglip_vision_tower.py",
    "conversation.py": "Eagle2_5/eaglevl/conversation.py",
}
SIGLIP_DIR = "Eagle2_5/eaglevl/model/siglip"
MODEL_SHIM = ("# encslim parity generator: Eagle2-9B's multi_backbone_channel_concatentation_model.py is not in the\n"
              "# index; the class it defines is the one at the end of the encoder text (same signature).\n"
              "from .multi_backbone_channel_concatenation_encoder import (\n"
              "    MultiBackboneChannelConcatenationVisionModel)\n")
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 448, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
          "model_type": "siglip_vision_model"}
CONVNEXT = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "use_sliding_window": False}
VISION_PATH = "MOB:convnext-1024;palisiglip"  # ConvNeXt at index 0: the concat order (SigLIP first) differs
TOWER_NAMES = ("convnext", "siglip")  # vision_towers.{i}.name in VISION_PATH order
QUESTION = "What is shown in the picture? Answer briefly."
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
KEEP_EVERY = 64  # image positions kept in the stored logits: every 64th (all text positions are kept)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def assemble(index_dir, eagle_git, work):
    """The remote-code package ``eagle2_remote.eagle2`` (+ ``eagle2_remote.siglip``) under ``work``."""
    root = Path(work) / "eagle2_remote"
    pkg, sig = root / "eagle2", root / "siglip"
    pkg.mkdir(parents=True)
    sig.mkdir()
    (root / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    digests = json.loads((HERE / "original_files.json").read_text())
    for name in INDEX_FILES:
        data = (Path(index_dir) / name).read_bytes()
        if sha256(data) != digests[name]:
            raise SystemExit(f"{name}: sha256 {sha256(data)} is not the recorded {digests[name]}")
        (pkg / name).write_bytes(data)

    def show(path):
        return subprocess.run(["git", "--git-dir", str(eagle_git), "show", f"{EAGLE_COMMIT}:{path}"],
                              check=True, capture_output=True).stdout

    for name, path in PINNED.items():
        (pkg / name).write_bytes(show(path))
    listing = subprocess.run(["git", "--git-dir", str(eagle_git), "ls-tree", "--name-only", EAGLE_COMMIT,
                              SIGLIP_DIR + "/"], check=True, capture_output=True, text=True).stdout.split()
    for path in listing:
        (sig / Path(path).name).write_bytes(show(path))
    (pkg / "multi_backbone_channel_concatentation_model.py").write_text(MODEL_SHIM)
    (pkg / "flash_attention.py").write_text("# encslim parity generator: flash_attn is CUDA-only; nothing of it runs\n")
    return root


def _exec_with(name, path, extra):
    """Import ``path`` as module ``name`` with ``extra`` names in its globals (names its text uses unimported)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(extra)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_original(index_dir, eagle_git, work):
    """``(modeling module, conversation module)`` of the assembled package, patched (README: Patches)."""
    sys.path.insert(0, str(HERE.parent / "eagle"))
    from make_goldens import install_torchvision_stub  # the Eagle v1 generator's placeholders

    install_torchvision_stub()
    root = assemble(index_dir, eagle_git, work)
    sys.path.insert(0, str(root.parent))
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pkg = root / "eagle2"
    config = _exec_with("eagle2_remote.eagle2.configuration_eagle2", pkg / "configuration_eagle2.py",
                        {"Union": typing.Union})
    _exec_with("eagle2_remote.eagle2.multi_backbone_channel_concatenation_encoder",
               pkg / "multi_backbone_channel_concatenation_encoder.py",
               {"Optional": typing.Optional, "Union": typing.Union, "Tuple": typing.Tuple,
                "BaseModelOutputWithPooling": BaseModelOutputWithPooling,
                "MultiBackboneChannelConcatenationVisionModelConfig":
                    config.MultiBackboneChannelConcatenationVisionModelConfig})
    from eagle2_remote.eagle2 import conversation, convnext_encoder, modeling_eagle_chat

    original_convnext = convnext_encoder.convnext_xxlarge
    original_load = convnext_encoder.ConvNextVisionTower.load_model

    def small_convnext(*args, **kwargs):  # the original function, its depths/dims overridden through **kwargs
        return original_convnext(*args, **{**kwargs, **CONVNEXT})

    def load_model(self):  # the original, then its hard-coded hidden_size (3072) set to the shrunk width
        original_load(self)
        setattr(self.vision_tower, "hidden_size", CONVNEXT["dims"][-1])

    convnext_encoder.convnext_xxlarge = small_convnext
    convnext_encoder.ConvNextVisionTower.load_model = load_model
    return modeling_eagle_chat, conversation


def byte_tokenizer(folder):
    """A byte-level tokenizer with Qwen2's chat tokens and Eagle2's image tokens, no BOS (as Qwen2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS})
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_model(modeling, tokenizer):
    """A small random ``Eagle2ChatModel`` from the original classes; seeded noise so each tower matters."""
    vision = {"model_type": "MOB", "vision_path": VISION_PATH, "moe_version_type": "convnext_512_siglip_448",
              "grid_size": 32, "input_image_size": 448, "image_size": 448, "convnext_img_size": 512,
              "mm_vision_select_layer": -2, "hidden_size": "lazy_calculation", "normalize_type": "siglip",
              "freeze_backbones": None, "delay_load": True,
              "vision_tower_convnext_path": "convnext_xxlarge.clip_laion2b_soup",
              "vision_tower_siglip_path": "google/siglip-so400m-patch14-448", "siglip_vision_config": dict(SIGLIP)}
    llm = {**TEXT, "architectures": ["Qwen2ForCausalLM"], "vocab_size": len(tokenizer),
           "bos_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = modeling.Eagle2ChatConfig(
        vision_config=vision, llm_config=llm, select_layer=-1, force_image_size=448, downsample_ratio=0.5,
        template="qwen2-chat", dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=6,
        architectures=["Eagle2ChatModel"], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = modeling.Eagle2ChatModel(config)
    model.float().eval()  # the original's load_model casts ConvNeXt to bfloat16; the goldens are float32
    with torch.no_grad():
        for param in model.vision_model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for param in model.mlp1[0].parameters():  # a LayerNorm affine that is not the identity
            param.add_(torch.randn_like(param) * 0.1)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model


def tiles_pixels():
    """The original's 7 tiles of the 800x600 image (``build_transform``: ToTensor, Normalize(0.5, 0.5))."""
    from safetensors.torch import load_file

    levels = load_file(str(HERE / "tiles" / "golden.safetensors"))["tiles_max6"]
    return (levels.float() / 255 - 0.5) / 0.5


def chat_prompt(model, conversation, tokenizer, tiles):
    """The query ``Eagle2ChatModel.chat`` builds for one image of ``tiles`` tiles, and its ids."""
    template = conversation.get_conv_template(model.template)
    template.system_message = model.system_message
    template.append_message(template.roles[0], "<image>\n" + QUESTION)
    template.append_message(template.roles[1], None)
    query = template.get_prompt()
    image_tokens = "<img>" + "<IMG_CONTEXT>" * model.num_image_token * tiles + "</img>"
    query = query.replace("<image>", image_tokens, 1)
    return template.get_prompt(), tokenizer(query, return_tensors="pt")


def init_single_process():
    """``Eagle2ChatModel.forward`` calls ``torch.distributed.get_rank()``: a one-process gloo group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)


def run_original(model, inputs, pixels):
    """Each tower's output and the logits: full model, then each tower's output zeroed (the paper's mask)."""
    towers = model.vision_model.vision_model.vision_towers
    out, seen = {}, {}
    hooks = [t.register_forward_hook(lambda mod, args, output: seen.__setitem__(mod.name, output)) for t in towers]
    flags = torch.ones(pixels.shape[0], 1, dtype=torch.long)

    def logits():
        return model(pixel_values=pixels, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     image_flags=flags, return_dict=True).logits

    with torch.no_grad():
        out["logits"] = logits()
        for hook in hooks:
            hook.remove()
        for name, value in seen.items():
            out[f"features.{name}"] = value
        for tower in towers:
            hook = tower.register_forward_hook(lambda mod, args, output: torch.zeros_like(output))
            try:
                out[f"logits_zero.{tower.name}"] = logits()
            finally:
                hook.remove()
    return out


def kept_positions(input_ids, image_token_id):
    """Every text position and every ``KEEP_EVERY``-th image position (the stored logits' rows)."""
    image = input_ids[0] == image_token_id
    index = torch.arange(input_ids.shape[1])
    rank = torch.cumsum(image.long(), 0) - 1
    return index[~image | (rank % KEEP_EVERY == 0)]


def build(index_dir, eagle_git, out):
    import transformers
    from safetensors.torch import save_file

    assert transformers.__version__ == "4.37.2", transformers.__version__
    out = Path(out)
    model_dir = out / "model"
    modeling, conversation = import_original(index_dir, eagle_git, tempfile.mkdtemp())
    tokenizer = byte_tokenizer(model_dir)
    model = build_model(modeling, tokenizer)
    model.save_pretrained(str(model_dir))  # 4.37.2: model.safetensors (safe_serialization defaults to True)
    init_single_process()
    pixels = tiles_pixels()
    prompt, inputs = chat_prompt(model, conversation, tokenizer, pixels.shape[0])
    results = run_original(model, inputs, pixels)
    keep = kept_positions(inputs["input_ids"], model.img_context_token_id)
    tensors = {"input_ids": inputs["input_ids"].contiguous(), "logit_positions": keep.contiguous()}
    for key, value in results.items():
        tensors[key] = (value[:, keep] if key.startswith("logits") else value).contiguous()
    reloaded = reload_logits(modeling, model_dir, inputs, pixels)[:, keep]
    meta = {"eagle_commit": EAGLE_COMMIT, "transformers": transformers.__version__, "torch": torch.__version__,
            "prompt": prompt, "question": QUESTION, "vision_path": VISION_PATH, "tiles": str(pixels.shape[0]),
            "reload_max_diff": f"{(reloaded - tensors['logits']).abs().max().item():.3g}"}
    save_file(tensors, str(out / "golden.safetensors"), metadata=meta)
    (out / "golden.json").write_text(json.dumps({**meta, "shapes": {k: list(v.shape) for k, v in tensors.items()}},
                                                indent=2) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


def reload_logits(modeling, folder, inputs, pixels):
    """The full model's logits after the original ``from_pretrained`` of ``folder``."""
    model = modeling.Eagle2ChatModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    model.img_context_token_id = AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids("<IMG_CONTEXT>")
    with torch.no_grad():
        return model(pixel_values=pixels, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     image_flags=torch.ones(pixels.shape[0], 1, dtype=torch.long), return_dict=True).logits


def load(index_dir, eagle_git, folder, golden_dir):
    """Open ``folder`` with the original ``from_pretrained``: print the refusal, or the logits' distance to the
    golden's full and zero-mask logits."""
    from safetensors.torch import load_file

    modeling, _ = import_original(index_dir, eagle_git, tempfile.mkdtemp())
    init_single_process()
    golden = load_file(str(Path(golden_dir) / "golden.safetensors"))
    inputs = {"input_ids": golden["input_ids"], "attention_mask": torch.ones_like(golden["input_ids"])}
    try:
        logits = reload_logits(modeling, folder, inputs, tiles_pixels())[:, golden["logit_positions"]]
    except Exception as exc:  # what the original says is the result
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(json.dumps({"folder": str(folder), "refused": f"{type(exc).__name__}: {exc}",
                          "at": f"{Path(where.filename).name}:{where.lineno} {where.name}: {where.line}"}))
        return
    diffs = {k: (logits - v).abs().max().item() for k, v in golden.items() if k.startswith("logits")}
    print(json.dumps({"folder": str(folder), "loaded": True, "max_diff": diffs}))


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(*sys.argv[2:5])
    else:
        load(*sys.argv[2:6])
