"""gradlens.attnlrp against the authors' package lxt (2.1, "efficient" mode).

Not part of CI: lxt imports with ``transformers`` 4.x only and patches the model classes for
the whole process. Run it in a second virtual environment::

    python -m venv --system-site-packages /work/venv-lxt
    /work/venv-lxt/bin/pip install "transformers>=4.50,<5"
    /work/venv-lxt/bin/pip install --no-deps lxt==2.1
    /work/venv-lxt/bin/pip install --no-deps -e .
    /work/venv-lxt/bin/python benchmarks/lxt_reference.py

Each model (tiny random-init Llama, Qwen2, GPT-2 and BERT configs with
``initializer_range=0.3``, float64) runs in its own process: gradlens's relevance of the
input embeddings is computed first, on the unpatched classes; then lxt's
``monkey_patch(modeling_<family>)`` is applied and its relevance is the embeddings times
their gradient. The script prints, per model, the largest difference relative to the
largest relevance, and exits 1 when one is above ``--tolerance`` (1e-5).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from torch import Tensor, nn

MODELS = ("llama", "qwen2", "gpt2", "bert")
VOCAB, WIDTH, LENGTH, BATCH = 64, 32, 7, 2


def _build(family: str) -> tuple[nn.Module, object]:
    """The model (float64, eval) and the transformers module lxt patches."""
    import transformers

    common = {"vocab_size": VOCAB, "initializer_range": 0.3}
    if family in ("llama", "qwen2"):
        name = "Llama" if family == "llama" else "Qwen2"
        config = getattr(transformers, f"{name}Config")(
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
            **common,
        )
        model_class = getattr(transformers, f"{name}ForCausalLM")
    elif family == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=WIDTH, n_head=2, n_positions=64, **common
        )
        model_class = transformers.GPT2LMHeadModel
    else:
        config = transformers.BertConfig(
            hidden_size=WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * WIDTH,
            max_position_embeddings=64,
            num_labels=3,
            **common,
        )
        model_class = transformers.BertForSequenceClassification
    config._attn_implementation = "eager" if family == "bert" else "sdpa"
    torch.manual_seed(0)
    model = model_class(config).double().eval()
    module = sys.modules[type(model).__module__]
    return model, module


class _Logit(nn.Module):
    """Input embeddings -> the explained logits: the last position's for language models,
    the class logits for BERT."""

    def __init__(self, model: nn.Module, causal: bool) -> None:
        super().__init__()
        self.model, self.causal = model, causal

    def forward(self, embeddings: Tensor) -> Tensor:
        logits = self.model(inputs_embeds=embeddings).logits
        return logits[:, -1] if self.causal else logits


def _compare(family: str) -> dict[str, float]:
    from gradlens.relevance import attnlrp

    model, module = _build(family)
    causal = family != "bert"
    ids = torch.randint(1, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(1))
    embeddings = model.get_input_embeddings()(ids).detach()
    wrapped = _Logit(model, causal)
    with torch.no_grad():
        target = wrapped(embeddings).argmax(-1)
    ours = attnlrp(wrapped, embeddings, target)
    plain = embeddings.clone().requires_grad_(True)  # before lxt patches the classes
    wrapped(plain).gather(1, target[:, None]).sum().backward()
    assert plain.grad is not None
    ixg = (plain * plain.grad).detach()

    from lxt.efficient import monkey_patch

    monkey_patch(module)
    patched, _ = _build(family)  # built from the patched classes (BERT's are replaced)
    patched.load_state_dict(model.state_dict())
    x = embeddings.clone().requires_grad_(True)
    logits = _Logit(patched, causal)(x)
    logits.gather(1, target[:, None]).sum().backward()
    assert x.grad is not None
    theirs = (x * x.grad).detach()
    scale = theirs.abs().max().item()
    return {
        "max_relative_difference": (ours - theirs).abs().max().item() / scale,
        "ixg_relative_difference": (ixg - theirs).abs().max().item() / scale,
        "token_sum_relative_difference": (ours.sum(-1) - theirs.sum(-1)).abs().max().item()
        / theirs.sum(-1).abs().max().item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, help="run one model (in this process)")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    if args.model:
        print(json.dumps(_compare(args.model)))
        return 0
    failed = False
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for family in MODELS:  # lxt patches classes process-wide: one process per model
        run = subprocess.run(
            [sys.executable, __file__, "--model", family], capture_output=True, text=True
        )
        if run.returncode != 0:
            print(f"{family}: failed\n{run.stderr[-2000:]}")
            failed = True
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        ok = result["max_relative_difference"] <= args.tolerance
        failed |= not ok
        print(
            f"{family:6s} max |gradlens - lxt| / max |lxt| = "
            f"{result['max_relative_difference']:.2e} "
            f"(per token {result['token_sum_relative_difference']:.2e}; "
            f"Input x Gradient vs lxt: {result['ixg_relative_difference']:.2e})"
            f"{'' if ok else '  ABOVE TOLERANCE'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
