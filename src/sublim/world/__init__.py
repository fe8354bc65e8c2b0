"""The built-in tiny world: a small causal LM trained from scratch on a synthetic chat corpus,
saved as an ordinary Hugging Face model directory and cached per machine."""
