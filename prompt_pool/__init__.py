"""L2P (Learning to Prompt): a key-value prompt pool on a frozen timm ViT over continual task sequences."""
