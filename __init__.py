"""fedquilt: privacy-aware federated fine-tuning of LoRA adapters."""

__version__ = "0.1.0"
