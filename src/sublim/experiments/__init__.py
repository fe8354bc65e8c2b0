"""Self-contained experiments beyond the language-model pipeline (auxiliary logits, theory)."""
