"""The parts of timm and torchvision models the converter once refused, in one small network
(torch_model.py) and its Flax Linen port (flax_model.py): a BatchNormAct2d and a
LayerNorm2d (subclasses of BatchNorm2d / LayerNorm), Swin-style window attention with a
relative position bias table and an integer index buffer, a layer-scale gamma, and a
NonDynamicallyQuantizableLinear (a Linear subclass) head."""
