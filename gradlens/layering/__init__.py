"""Which layers a model has, and which one a method should use.

* :mod:`~gradlens.layering.discovery` -- :func:`layers` (every layer's name, type and
  output shape) and :func:`default_layer` (the layer a CAM uses when none is named);
* :mod:`~gradlens.layering.resolve` -- the one place where a method's ``layer=`` (a spec or
  ``None``) becomes module names.
"""
