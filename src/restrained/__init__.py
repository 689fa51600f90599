"""Shared code of the executable textbook *Restrained Instabilities*.

The modules follow the order in which the book teaches them:

* :mod:`restrained.runtime`: :func:`setup` fixes float32, the ``highest`` matmul precision
  and deterministic XLA ops for every notebook;
* :mod:`restrained.fp`: floating-point spacing, correctly rounded division, the k-trick,
  reduced-precision emulation and the divergence measure ``D``;
* :mod:`restrained.optim`: the authors' perturbed SGD as an Optax transformation;
* :mod:`restrained.widgets`: the learning-rate / weight-decay slider figure;
* :mod:`restrained.twins`: two copies of a network trained in lockstep (chapters 0-1);
* :mod:`restrained.pde`: heat-equation schemes and von Neumann analysis (chapter 2);
* :mod:`restrained.linear_stability`: gradient descent on quadratics (chapter 3);
* :mod:`restrained.cnn_pde`: the one-layer CNN PDE and its stability window (chapter 4);
* :mod:`restrained.sharpness`: top Hessian eigenvalues by Lanczos/LOBPCG (chapters 5, 7);
* :mod:`restrained.data`, :mod:`restrained.models`, :mod:`restrained.ensemble`,
  :mod:`restrained.train`, :mod:`restrained.experiments`: the experiment engine behind
  ``python -m restrained run`` (Part IV).
"""

from restrained.runtime import setup

__all__ = ["setup"]
__version__ = "0.1.0"
