"""memexp: memorise facts exactly with a frozen HF backbone (fine-tuning, LoRA, memory experts)."""
