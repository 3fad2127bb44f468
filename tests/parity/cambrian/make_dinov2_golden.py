"""Golden outputs of Cambrian-1's DINOv2 tower as the ORIGINAL stack computes it (transformers 4.37.2).

Cambrian-1 (cambrian-mllm/cambrian, ``cambrian/model/multimodal_encoder/dino_encoder.py``,
``DinoVisionTower``) runs transformers' ``Dinov2Model`` from ``facebook/dinov2-giant`` at 378 px: a 37x37
position table resampled to 27x27 by ``Dinov2Embeddings.interpolate_pos_encoding``. Cambrian pins
transformers 4.37; its resampling (``scale_factor=(h//p + 0.1)/sqrt(N)``) differs from transformers 5's
(an explicit ``size``). This script builds a small random DINOv2 with the real patch size, position
table and input size (only the width and depth are shrunk), saves it as transformers 4.37 saves it, and
records the tower's ``last_hidden_state`` on seeded pixels.

Run it in its own venv (see README.md beside it), never in CI:

    python -m venv --system-site-packages /tmp/venv437
    /tmp/venv437/bin/pip install --no-deps transformers==4.37.2 tokenizers==0.15.2 huggingface-hub==0.20.3
    /tmp/venv437/bin/python tests/parity/cambrian/make_dinov2_golden.py tests/parity/cambrian/dinov2
"""

import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

REAL = {"patch_size": 14, "image_size": 518}  # facebook/dinov2-giant: 37x37 positions
SHRUNK = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4}
RUN_AT = (378, 378)  # Cambrian's dinov2-giant-res378


def main(out):
    assert transformers.__version__ == "4.37.2", transformers.__version__
    out = Path(out)
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**REAL, **SHRUNK)).eval()
    with torch.no_grad():  # a position table with structure at every scale (init is tiny noise)
        model.embeddings.position_embeddings.normal_(0.0, 1.0)
    model.save_pretrained(out / "model")
    pixels = torch.randn(1, 3, *RUN_AT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    save_file({"pixel_values": pixels.contiguous(), "last_hidden_state": hidden.contiguous()},
              str(out / "golden.safetensors"), metadata={"transformers": transformers.__version__,
                                                         "torch": torch.__version__})
    print(f"wrote {out}: last_hidden_state {tuple(hidden.shape)}")


if __name__ == "__main__":
    main(sys.argv[1])
