"""Export: HF folders, manifests, model cards, stock-class conversion, ONNX."""
