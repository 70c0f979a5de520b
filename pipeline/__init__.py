"""The analysis of one head CT series: volume → brain → segment → features → classify → encode."""

import os

# TensorFlow leaves its oneDNN CPU kernels off on some x86 CPUs (an AVX2-only AMD EPYC here). On
# with the same weights: model 1's probability map within 5e-6 (the same mask), inference 2.6× and a
# training step 6× faster there (docs/model1.md). A documented switch TF reads when it loads, set before
# any TF import (every one is lazy, behind this package); an admin's own value wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
