"""Translation-equivariant kernelized (Performer, FAVOR+) attention on images.

Implements the models of "Translational Equivariance in Kernelizable Attention"
(Horn, Shridhar, Groenewald, Baumann, arXiv 2102.07680).
"""

__version__ = "0.1.0"
