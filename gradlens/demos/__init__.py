"""The demos and their ground truth: synthetic tasks, tiny models, training, and the three
runs of ``gradlens demo``.

* :mod:`~gradlens.demos.shapes` -- synthetic shapes with object masks;
* :mod:`~gradlens.demos.text_task` -- trigger-token sequences and a tiny text transformer;
* :mod:`~gradlens.demos.tiny_vit` -- a tiny vision transformer for the shapes;
* :mod:`~gradlens.demos.training` -- the tiny CNN and the one training loop;
* :mod:`~gradlens.demos.image`, :mod:`~gradlens.demos.vit`, :mod:`~gradlens.demos.text` --
  ``gradlens demo``, ``--vit`` and ``--text``.

Only the command line imports this package (an import-linter contract).
"""
