"""Per-token attributions for text models and language models.

* :func:`token_attributions` -- one score per input token ``(B, T)``, any gradient
  attribution run on the input embedding layer's output;
* :func:`generation_attributions` -- for each token of a continuation, the attribution of
  its log-probability to every position before it ``(B, K, T)``, all ``K`` rows from one
  batched backward.

One file per part: ``inputs`` (token ids or a mapping, parsed once), ``embedding`` (finding
the embedding layer, running a model on given embeddings), ``baselines`` (baseline token
ids from the model's config), ``tokens`` and ``generation``. The targets for language
models are :func:`gradlens.targets.token` and :func:`gradlens.targets.sequence`.
"""

from __future__ import annotations

from ..targets.language import config_token_id
from .baselines import Baseline, baseline_ids
from .embedding import FromEmbeddings, embedding_layer
from .generation import generation_attributions
from .inputs import TokenInput, TokenInputs
from .tokens import REDUCTIONS, TokenMethodOptions, token_attributions

__all__ = [
    "Baseline",
    "FromEmbeddings",
    "REDUCTIONS",
    "TokenInput",
    "TokenInputs",
    "TokenMethodOptions",
    "baseline_ids",
    "config_token_id",
    "embedding_layer",
    "generation_attributions",
    "token_attributions",
]
