"""The capture engine: everything that touches a model's forward and backward passes.

* :mod:`~gradlens.core.hooks` -- :class:`HookSet`, the only code that registers hooks;
* :mod:`~gradlens.core.lifecycle` -- the enter/exit, rollback and early stop that the
  :class:`~gradlens.core.recorder.Recorder` and the attention capture share;
* :mod:`~gradlens.core.recorder` -- :class:`Recorder` and :func:`record`: activations and
  gradients of named modules;
* :mod:`~gradlens.core.outputs` -- :func:`replace_outputs`, the writing side;
* :mod:`~gradlens.core.backward` -- :func:`override_backward` (another backward rule for
  selected modules) and :func:`override_functions` (torch functions rerouted while selected
  modules run): the modified backward passes of relevance propagation and DeepLIFT;
* :mod:`~gradlens.core.extract` -- :func:`extract` and :class:`Extractor`: features without
  a tape, stopping the forward early;
* :mod:`~gradlens.core.attention` -- attention probabilities under any kernel;
* :mod:`~gradlens.core.selection` -- layer specs (names, globs, types) to modules;
* :mod:`~gradlens.core.output_selection` -- which tensor of a structured output is meant;
* :mod:`~gradlens.core.inputs` -- :class:`ModelInput`, a method's input parsed once;
* :mod:`~gradlens.core.checks` -- the checks of a user's model and inputs, made before any
  hook is registered (and one NaN/inf warning per call);
* :mod:`~gradlens.core.chunks` -- stacked copies split into forwards of ``batch_size``;
* :mod:`~gradlens.core.parameters` -- parameters off the tape while a method runs;
* :mod:`~gradlens.core.pytree`, :mod:`~gradlens.core.batched_grad`,
  :mod:`~gradlens.core.buffers`, :mod:`~gradlens.core.parameters`,
  :mod:`~gradlens.core.folding` -- structured outputs, one backward for ``K`` scores (or
  chunks of them), buffer restoring, parameters off the tape and BatchNorm folding.

Nothing here imports a method, a target parser or anything above it (the import-linter
contracts in ``pyproject.toml`` check this).
"""
