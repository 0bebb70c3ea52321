"""A Vision Transformer with timm's VisionTransformer structure (patch embed conv,
cls_token, pos_embed, fused qkv attention scaled by head_dim^-0.5, LayerNorm eps 1e-6,
exact GELU MLP) in PyTorch (torch_model.py) and its Flax Linen port (flax_model.py), with
planted defects; its Block alone is the token-input example (input (N, L, C))."""
