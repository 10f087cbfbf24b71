"""memexp: frozen backbones, memory experts, fact data and hallucination metrics."""
