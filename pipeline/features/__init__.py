"""Model 2's features: radiomics of the 3D hematoma (``radiomics``) and frozen-CNN slice features (``cnn``,
on the ``backbones``)."""
