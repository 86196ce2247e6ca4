"""vitq: post-training quantization for vision transformers, CLIP-style models and diffusion UNets."""

__version__ = "0.1.0"
