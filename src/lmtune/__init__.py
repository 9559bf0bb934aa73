"""lmtune: fine-tune language models from one typed YAML config."""

__version__ = "0.1.0"
