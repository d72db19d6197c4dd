"""Fine-tuning: data, LoRA, DeepSpeed config, checkpoints, the HF Trainer, and merging (task=train/merge)."""
