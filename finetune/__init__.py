"""Fine-tuning: LoRA (peft), Trainer + DeepSpeed, data collators, merge."""
