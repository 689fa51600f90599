"""Shared code of the executable textbook *Restrained Instabilities*.

The modules follow the order in which the book teaches them:

* :mod:`restrained.runtime`: one call, :func:`setup`, that fixes float32, the
  ``highest`` matmul precision and deterministic XLA ops for every notebook;
* :mod:`restrained.fp`: floating-point spacing and the divergence measure ``D``;
* :mod:`restrained.optim`: the authors' perturbed SGD as an Optax transformation;
* :mod:`restrained.widgets`: the learning-rate / weight-decay slider figure;
* :mod:`restrained.data`, :mod:`restrained.models`, :mod:`restrained.twins`: the
  small digits CNN of the opening puzzle, trained as two copies in lockstep.
"""

from restrained.runtime import setup

__all__ = ["setup"]
__version__ = "0.1.0"
