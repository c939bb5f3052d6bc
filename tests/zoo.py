"""The tiny-model zoo: one builder per real architecture the tests run on.

Every builder seeds the global generator with ``seed`` (``torch.manual_seed``) right before
it constructs the model, so the same call gives the same weights in every test file and a
test that draws from the global generator after the builder sees the same numbers as
before. Weights are random (built from configs, nothing is downloaded) and every model is
returned in eval mode.

The sizes are the smallest that keep what a test needs of the architecture: two blocks (so
a "last block" differs from the first), two heads (so per-head maps differ), a width of 32,
32 x 32 images in 8 x 8 patches (a 4 x 4 grid plus a class token: 17 tokens). Keyword
arguments cover the variants tests ask for on purpose (attention kernel, number of labels,
vocabulary, positions); each changes the random draws, so a test keeps the options it was
written with.

Builders:

* :func:`torchvision_cnn` -- a torchvision classifier by name (ResNet-18, DenseNet-121,
  MobileNet-V3-small), 10 classes.
* :func:`torchvision_vit` -- torchvision ``VisionTransformer`` (``nn.MultiheadAttention``).
* :func:`torchvision_swin` -- torchvision ``SwinTransformer`` (windowed attention).
* :func:`timm_vit` -- timm ``VisionTransformer`` (fused ``scaled_dot_product_attention``).
* :func:`hf_vit`, :func:`hf_swin` -- Hugging Face image classifiers.
* :func:`hf_bert` -- Hugging Face BERT sequence classifier.
* :func:`hf_gpt2` -- Hugging Face GPT-2 language model.
* :func:`hf_llama`, :func:`hf_qwen2`, :func:`hf_gemma` -- Hugging Face decoder language
  models with RMSNorm, rotary positions and gated MLPs (Gemma's RMSNorm scales by
  ``1 + weight``).
* :func:`plain_transformer` -- a transformer classifier written out in plain torch (the
  AttnLRP reference test's model).
* :func:`eager_and_sdpa` -- the same Hugging Face weights with both attention kernels.
* :func:`shapes_cnn` -- the shapes demo's ``TinyCNN`` (random weights, any image size).
* :func:`linear_classifier` -- ``logits = W x`` on flattened images, with a given ``W``
  (metrics whose value the maths gives exactly).
* :func:`token_ids` -- random ids for the text models.
* :func:`dispatched` -- a copy of any of them dispatched by accelerate (CPU or disk offload,
  or split over devices by a device map).
* :func:`sparse_autoencoder` -- a :class:`gradlens.sae.SparseAutoencoder` with non-zero
  biases (for splicing into the models above).
* :func:`word_tokenizer` -- a word-level tokenizer for :func:`hf_gpt2`, built offline.
* :func:`transformer_bridge` -- a TransformerLens ``TransformerBridge`` booted natively.
* :func:`feedforward_cnn` -- a plain CNN whose nonlinearity modules each run once, with a
  linear layer between any two of them (the models Captum's ``DeepLift`` handles).
* :func:`with_batchnorm_statistics` -- random running statistics and affine parameters for
  a model's BatchNorms (fresh ones normalise by mean 0, variance 1: an identity).
* :func:`bias_free_cnn` -- a CNN without biases, with a residual block, a concatenation,
  max and average pooling (relevance is conserved through it).
* :func:`captum_cnn` -- a CNN of the layers Captum's ``LRP`` supports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

TEXT_VOCAB = 64
"""The text models' default vocabulary: id 0 is BERT's padding token, ``TEXT_VOCAB - 1`` is
GPT-2's begin/end token."""


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def torchvision_cnn(arch: str = "resnet18", *, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A torchvision classifier with random weights.

    Args:
        arch: the ``torchvision.models`` builder: ``"resnet18"`` (``layer4`` is its CAM layer),
            ``"densenet121"``, ``"mobilenet_v3_small"`` (``features``), ``"vgg16_bn"`` (the
            LRP references; its classifier alone is 120 M parameters).
        num_classes: the classifier's outputs; 10 keeps the head small.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``(B, 3, H, W)`` images -> ``(B, num_classes)`` logits.
    """
    import torchvision

    _seed(seed)
    return getattr(torchvision.models, arch)(num_classes=num_classes).eval()


def torchvision_vit(
    *, num_classes: int = 10, head_seed: int | None = None, seed: int = 0
) -> nn.Module:
    """torchvision's ``VisionTransformer``: 32 x 32 images, 8 x 8 patches (16 tokens and a class
    token), 2 layers of 2 heads, width 32, MLP 64; its attention is ``nn.MultiheadAttention``
    called with ``need_weights=False`` (the fused fast path).

    Args:
        num_classes: the head's outputs (the head is built before the other weights are
            drawn, so this changes every weight).
        head_seed: torchvision initialises the head to zeros, so every class score and every
            gradient of one is 0; an int draws the head's weight from N(0, 1) with its own
            generator of that seed, leaving the other weights as they are.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``(B, 3, 32, 32)`` -> ``(B, num_classes)``.
    """
    from torchvision.models import VisionTransformer

    _seed(seed)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=num_classes,
    ).eval()
    if head_seed is not None:
        with torch.no_grad():
            model.heads.head.weight.normal_(generator=torch.Generator().manual_seed(head_seed))
    return model


def torchvision_swin(*, seed: int = 0) -> nn.Module:
    """torchvision's ``SwinTransformer``: 4 x 4 patches, width 24, two stages of one block
    (1 then 2 heads), 4 x 4 windows, 10 classes. The smallest Swin with a patch merging
    between two stages of windowed attention.

    Returns:
        The model in eval mode: ``(B, 3, H, W)`` (H, W multiples of 32) -> ``(B, 10)``.
    """
    from torchvision.models import SwinTransformer

    _seed(seed)
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=24,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=[4, 4],
        num_classes=10,
    ).eval()


def timm_vit(*, fused: bool | None = None, mlp_ratio: float = 4.0, seed: int = 0) -> nn.Module:
    """timm's ``VisionTransformer``: 32 x 32 images, 8 x 8 patches, 2 blocks of 2 heads, width
    32, 3 classes.

    Args:
        fused: ``True`` makes every block's attention call ``scaled_dot_product_attention``
            (the fused kernel), ``False`` the eager softmax path; ``None`` keeps timm's choice.
        mlp_ratio: the MLP's width over the model's (timm's default 4.0).
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``(B, 3, 32, 32)`` -> ``(B, 3)``.
    """
    from timm.models.vision_transformer import VisionTransformer

    _seed(seed)
    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=mlp_ratio,
        num_classes=3,
    ).eval()
    if fused is not None:
        for block in model.blocks:
            block.attn.fused_attn = fused
    return model


def _attention(model: Any, attn_implementation: str | None) -> Any:
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    return model


def hf_vit(
    *,
    layers: int = 2,
    num_labels: int = 3,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``ViTForImageClassification``: 32 x 32 images, 8 x 8 patches (17 tokens),
    width 32, 2 heads, intermediate 64.

    Args:
        layers: the number of encoder layers (a rollout test uses 3 so the product has more
            than two factors).
        num_labels: the classifier's outputs.
        attn_implementation: ``"eager"`` (softmax, ``output_attentions`` available) or
            ``"sdpa"``; ``None`` keeps the library's default.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``pixel_values`` ``(B, 3, 32, 32)`` -> an output whose
        ``logits`` are ``(B, num_labels)``.
    """
    import transformers

    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    _seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    return _attention(model, attn_implementation)


def hf_swin(*, seed: int = 0) -> nn.Module:
    """Hugging Face ``SwinForImageClassification``: 32 x 32 images, 4 x 4 patches, width 16,
    two stages of one block (1 then 2 heads), 4 x 4 windows, 3 labels.

    Returns:
        The model in eval mode: ``(B, 3, 32, 32)`` -> an output with ``(B, 3)`` logits.
    """
    import transformers

    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        num_labels=3,
    )
    _seed(seed)
    return transformers.SwinForImageClassification(config).eval()


def hf_bert(
    *,
    vocab_size: int = TEXT_VOCAB,
    max_positions: int = 32,
    num_labels: int = 3,
    width: int = 32,
    layers: int = 2,
    attn_implementation: str | None = None,
    initializer_range: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``BertForSequenceClassification`` with 2 heads, intermediate ``2 * width``,
    padding token 0.

    Args:
        vocab_size: the number of token ids.
        max_positions: the longest sequence (``max_position_embeddings``).
        num_labels: the classifier's outputs.
        width: the hidden size (32; a training test uses 16).
        layers: the number of encoder layers (2; a training test uses 1).
        attn_implementation: ``"eager"`` or ``"sdpa"``; ``None`` keeps the library's default.
        initializer_range: the standard deviation of the weights (``None``: the config's
            0.02; the relevance tests use 0.3 so that the attention and MLP paths matter).
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``input_ids`` ``(B, T)`` (and an ``attention_mask``) -> an
        output whose ``logits`` are ``(B, num_labels)``.
    """
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=max_positions,
        num_labels=num_labels,
        **_initializer(initializer_range),
    )
    _seed(seed)
    model = transformers.BertForSequenceClassification(config).eval()
    return _attention(model, attn_implementation)


def hf_gpt2(
    *,
    vocab_size: int = TEXT_VOCAB,
    positions: int = 32,
    heads: int = 2,
    end_token_id: int | None = None,
    attn_implementation: str | None = None,
    initializer_range: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``GPT2LMHeadModel``: 2 layers, width 32, no padding token.

    Args:
        vocab_size: the number of token ids.
        positions: the longest sequence (``n_positions``).
        heads: the number of attention heads (the weights do not depend on it).
        end_token_id: the begin- and end-of-text id (where ``generate`` stops); ``None`` is
            the last id, ``vocab_size - 1``, which :func:`token_ids` never draws.
        attn_implementation: ``"eager"`` or ``"sdpa"``; ``None`` keeps the library's default.
        initializer_range: the standard deviation of the weights (``None``: the config's).
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``input_ids`` ``(B, T)`` -> an output whose ``logits`` are
        ``(B, T, vocab_size)``.
    """
    import transformers

    end = vocab_size - 1 if end_token_id is None else end_token_id
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=heads,
        vocab_size=vocab_size,
        n_positions=positions,
        bos_token_id=end,
        eos_token_id=end,
        **_initializer(initializer_range),
    )
    _seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    return _attention(model, attn_implementation)


def _initializer(initializer_range: float | None) -> dict[str, float]:
    return {} if initializer_range is None else {"initializer_range": initializer_range}


def _decoder(
    family: str,
    *,
    attn_implementation: str | None,
    initializer_range: float | None,
    seed: int,
    **extra: Any,
) -> nn.Module:
    import transformers

    config_class = getattr(transformers, f"{family}Config")
    model_class = getattr(transformers, f"{family}ForCausalLM")
    config = config_class(
        vocab_size=TEXT_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=TEXT_VOCAB - 1,
        eos_token_id=TEXT_VOCAB - 1,
        pad_token_id=0,
        tie_word_embeddings=False,
        **_initializer(initializer_range),
        **extra,
    )
    _seed(seed)
    model = model_class(config).eval()
    return _attention(model, attn_implementation)


def hf_llama(
    *,
    attn_implementation: str | None = None,
    initializer_range: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``LlamaForCausalLM``: 2 layers, width 32, 4 query heads sharing 2
    key/value heads (grouped-query attention), SiLU-gated MLP of 64, RMSNorm, rotary
    positions, vocabulary :data:`TEXT_VOCAB` (id 0 is the padding token).

    Args:
        attn_implementation: ``"eager"`` or ``"sdpa"``; ``None`` keeps the library's default.
        initializer_range: the standard deviation of the weights (``None``: the config's).
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``input_ids`` ``(B, T)`` -> ``logits`` ``(B, T, 64)``.
    """
    return _decoder(
        "Llama",
        attn_implementation=attn_implementation,
        initializer_range=initializer_range,
        seed=seed,
    )


def hf_qwen2(
    *,
    attn_implementation: str | None = None,
    initializer_range: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``Qwen2ForCausalLM``, sized as :func:`hf_llama` (biases on the query,
    key and value projections).

    Returns:
        The model in eval mode: ``input_ids`` ``(B, T)`` -> ``logits`` ``(B, T, 64)``.
    """
    return _decoder(
        "Qwen2",
        attn_implementation=attn_implementation,
        initializer_range=initializer_range,
        seed=seed,
    )


def hf_gemma(
    *,
    attn_implementation: str | None = None,
    initializer_range: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """Hugging Face ``GemmaForCausalLM``, sized as :func:`hf_llama` (head width 8): its
    RMSNorm scales by ``1 + weight``, its MLP is gated by tanh-GELU and it multiplies the
    embeddings by ``sqrt(width)``. The norm weights are drawn from N(0, 0.1) (Gemma
    initialises them to 0, where the offset would not show).

    Returns:
        The model in eval mode: ``input_ids`` ``(B, T)`` -> ``logits`` ``(B, T, 64)``.
    """
    model = _decoder(
        "Gemma",
        attn_implementation=attn_implementation,
        initializer_range=initializer_range,
        seed=seed,
        head_dim=8,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.1, generator=generator)
    return model


def eager_and_sdpa(build: Callable[..., nn.Module], **options: Any) -> tuple[nn.Module, nn.Module]:
    """The same weights (``build(**options)``) with eager and with sdpa attention.

    Returns:
        ``(eager, sdpa)``, both in eval mode; the sdpa model is loaded with the eager one's
        state dict.
    """
    eager = build(attn_implementation="eager", **options)
    sdpa = build(attn_implementation="sdpa", **options)
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa


def shapes_cnn(*, in_channels: int = 3, num_classes: int = 9, seed: int = 0) -> nn.Module:
    """The shapes task's CNN (:class:`gradlens.demos.training.TinyCNN`), random weights.

    Args:
        in_channels: the image channels (1 for the one-channel cases of Quantus' ROAD).
        num_classes: the classifier's outputs.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``(B, in_channels, H, W)`` -> ``(B, num_classes)``.
    """
    from gradlens.demos.training import TinyCNN

    _seed(seed)
    return TinyCNN(num_classes=num_classes, in_channels=in_channels).eval()


def linear_classifier(weight: torch.Tensor) -> nn.Module:
    """``logits = x.flatten(1) @ weight.T``: a linear classifier without bias whose weights
    are given, so that every score and gradient x input is known exactly.

    Args:
        weight: ``(num_classes, C * H * W)``; it is copied into the model (float64).

    Returns:
        The model in eval mode: ``(B, C, H, W)`` float64 images -> ``(B, num_classes)``.
    """
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), linear).eval()


def token_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Random ids in ``1..TEXT_VOCAB-2`` (never BERT's padding token 0 nor GPT-2's end token),
    ``(batch, length)``, from their own generator."""
    return torch.randint(
        1, TEXT_VOCAB - 1, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def dispatched(
    model: nn.Module,
    how: Literal["cpu", "disk"] | Mapping[str, int | str],
    *,
    folder: Path | None = None,
    **options: Any,
) -> nn.Module:
    """A copy of ``model`` (same weights) dispatched by accelerate, as ``device_map=`` loading
    does: ``AlignDevicesHook`` s on its modules move inputs, and load offloaded weights,
    inside each module's forward.

    Args:
        model: the model to copy (left as it is).
        how: ``"cpu"``: every weight offloaded to the CPU and loaded for each forward
            (``accelerate.cpu_offload``); ``"disk"``: offloaded to ``folder``
            (``accelerate.disk_offload``); a device map ``{module name: device}``: each
            module runs on its device (``accelerate.dispatch_model`` with the CPU as main
            device, so modules mapped to ``"cpu"`` run there).
        folder: where disk offload writes the weights (a test's ``tmp_path``).
        **options: further keywords of the accelerate function (``offload_buffers``).

    Returns:
        The dispatched copy; its offloaded parameters are on the ``meta`` device and its
        forward runs on the CPU (offload) or on the devices of the map.
    """
    import accelerate

    copied = copy.deepcopy(model)
    cpu = torch.device("cpu")
    if how == "cpu":
        return accelerate.cpu_offload(copied, execution_device=cpu, **options)
    if how == "disk":
        if folder is None:
            raise ValueError("disk offload needs a folder")
        return accelerate.disk_offload(copied, str(folder), execution_device=cpu, **options)
    return accelerate.dispatch_model(
        copied, device_map=dict(how), main_device="cpu", force_hooks=True, **options
    )


def sparse_autoencoder(d_in: int = 32, n_latents: int = 48, *, seed: int = 0) -> nn.Module:
    """:class:`gradlens.sae.SparseAutoencoder` (``d_in`` -> ``n_latents``) with random,
    non-zero biases, so that every term of ``encode`` and ``decode`` shows in the tests; the
    default width is the GPT-2's. About half the latents fire on a random input."""
    from gradlens.sae import SparseAutoencoder

    _seed(seed)
    sae = SparseAutoencoder(d_in, n_latents)
    with torch.no_grad():
        sae.b_enc.normal_(0.0, 0.02)
        sae.b_dec.normal_(0.0, 0.02)
    return sae


def word_tokenizer(*, hf: bool = False) -> Any:
    """A word-level tokenizer for :func:`hf_gpt2`'s vocabulary, built offline: ``"w1"`` ...
    ``"w62"`` are ids 1 ... 62, ``[UNK]`` is 0, ``<|endoftext|>`` is ``TEXT_VOCAB - 1`` (GPT-2's
    begin/end token); words are split on whitespace.

    Args:
        hf: wrap it as a Hugging Face ``PreTrainedTokenizerFast`` (whose ``bos_token_id`` is
            the end-of-text id); default: the ``tokenizers.Tokenizer`` itself (no BOS id).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, TEXT_VOCAB - 1)}}
    vocab["<|endoftext|>"] = TEXT_VOCAB - 1
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if not hf:
        return core
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", bos_token="<|endoftext|>"
    )


def transformer_bridge(*, seed: int = 0) -> nn.Module:
    """TransformerLens 4's ``TransformerBridge`` booted from a config (no download): 2 layers,
    width 32, 4 heads of 8, MLP 64, 40 token ids, 16 positions, LayerNorm, GELU.

    Returns:
        The bridge in eval mode: ``(B, T)`` ids -> ``(B, T, 40)`` logits; its hook points
        (``blocks.0.hook_in``, ``blocks.1.hook_out``, ...) are modules.
    """
    import transformer_lens as lens
    from transformer_lens.model_bridge import TransformerBridge

    config = lens.TransformerBridgeConfig(
        n_layers=2,
        d_model=32,
        n_ctx=16,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=40,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    _seed(seed)
    return TransformerBridge.boot_native(config).eval()


def feedforward_cnn(*, num_classes: int = 5, seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU, conv, MaxPool2d(2), conv-Tanh, linear-Sigmoid, linear-Softplus, linear.

    Every nonlinearity module runs once per forward and none feeds another directly (a
    convolution or linear layer sits between any two), with random BatchNorm statistics.

    Args:
        num_classes: the outputs.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: ``(B, 3, 12, 12)`` images -> ``(B, num_classes)`` logits.
    """
    _seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.Sigmoid(),
        nn.Linear(16, 16),
        nn.Softplus(),
        nn.Linear(16, num_classes),
    )
    batchnorm = model[1]
    assert isinstance(batchnorm, nn.BatchNorm2d)
    batchnorm.running_mean.uniform_(-0.5, 0.5)
    batchnorm.running_var.uniform_(0.5, 1.5)
    return model.eval()


def with_batchnorm_statistics(
    model: nn.Module, *, seed: int = 0, eps: float | None = None
) -> nn.Module:
    """Draw every BatchNorm's running mean from U(-0.5, 0.5), running variance from
    U(0.5, 2), weight from U(0.5, 1.5) and bias from U(-0.2, 0.2), from a generator of
    ``seed``; ``eps`` replaces the BatchNorms' eps.

    Returns:
        The model itself.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for tensor, (low, high) in (
                    (module.running_mean, (-0.5, 0.5)),
                    (module.running_var, (0.5, 2.0)),
                    (module.weight, (0.5, 1.5)),
                    (module.bias, (-0.2, 0.2)),
                ):
                    draw = torch.rand(tensor.shape, generator=generator)
                    tensor.copy_(low + (high - low) * draw)
                if eps is not None:
                    module.eps = eps
    return model


class BiasFreeCNN(nn.Module):
    """stem conv -> ReLU -> max pool -> residual block (``out += x``) -> ReLU -> two
    branches concatenated -> ReLU -> average pool -> linear, with no bias anywhere:
    ``(B, 3, 8, 8)`` -> ``(B, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.left = nn.Conv2d(4, 3, 1, bias=False)
        self.right = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.average = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem(x)))
        out = self.conv2(self.relu(self.conv1(x)))
        out += x
        x = self.relu(out)
        x = self.relu(torch.cat([self.left(x), self.right(x)], 1))
        return self.fc(self.average(x).flatten(1))


def bias_free_cnn(*, seed: int = 0) -> nn.Module:
    """:class:`BiasFreeCNN` with random weights, in eval mode."""
    _seed(seed)
    return BiasFreeCNN().eval()


class CaptumCNN(nn.Module):
    """conv -> ReLU -> max pool -> conv -> ReLU -> average pool -> linear (flattened in
    ``forward``): only layers Captum's ``LRP`` has rules for. ``(B, 3, 8, 8)`` -> ``(B, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


def captum_cnn(*, seed: int = 0) -> nn.Module:
    """:class:`CaptumCNN` with random weights, in eval mode."""
    _seed(seed)
    return CaptumCNN().eval()


class PlainBlock(nn.Module):
    """A pre-norm transformer block written out in plain torch (see :func:`plain_transformer`)."""

    def __init__(self, width: int, heads: int, *, bias: bool, kernel: str, gated: bool) -> None:
        super().__init__()
        self.heads, self.kernel, self.gated = heads, kernel, gated
        self.norm1 = nn.LayerNorm(width, bias=bias)
        self.query = nn.Linear(width, width, bias=bias)
        self.key = nn.Linear(width, width, bias=bias)
        self.value = nn.Linear(width, width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.norm2 = nn.LayerNorm(width, bias=bias)
        self.fc1 = nn.Linear(width, 2 * width, bias=bias)
        self.gate = nn.Linear(width, 2 * width, bias=bias) if gated else None
        self.act = nn.SiLU() if gated else nn.GELU()
        self.fc2 = nn.Linear(2 * width, width, bias=bias)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        if self.kernel == "sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(x.shape))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.fc2(self.act(self.gate(x)) * self.fc1(x))
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel != "none":
            x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PlainTransformer(nn.Module):
    """Embeddings ``(B, T, width)`` -> class logits ``(B, classes)`` read at token 0."""

    def __init__(
        self, width: int, heads: int, tokens: int, classes: int, blocks: int, **block: Any
    ) -> None:
        super().__init__()
        bias = block["bias"]
        self.position = nn.Parameter(torch.randn(tokens, width) * 0.5)
        self.blocks = nn.ModuleList(PlainBlock(width, heads, **block) for _ in range(blocks))
        self.norm = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def plain_transformer(
    *,
    kernel: str = "sdpa",
    bias: bool = True,
    gated: bool = False,
    blocks: int = 2,
    std: float = 0.3,
    seed: int = 0,
) -> PlainTransformer:
    """A transformer classifier in plain torch: position embeddings added to the input
    embeddings, ``blocks`` pre-norm blocks (LayerNorm, 2-head attention, residual, LayerNorm,
    GELU MLP, residual), a final LayerNorm and a linear head on token 0; width 8, 5 tokens,
    3 classes, float64.

    Args:
        kernel: ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"eager"`` (``q @ kᵀ``,
            ``softmax``, ``@ v``) or ``"none"`` (blocks without attention: only the MLPs).
        bias: biases in the linear layers and LayerNorms (``False`` for conservation).
        gated: a SiLU-gated MLP ``fc2(silu(gate(x)) * fc1(x))`` instead of the GELU MLP.
        blocks: the number of blocks.
        std: the standard deviation of every weight, bias and LayerNorm parameter.
        seed: seeds the global generator before the model is built.

    Returns:
        The model in eval mode: embeddings ``(B, 5, 8)`` -> logits ``(B, 3)``.
    """
    _seed(seed)
    model = PlainTransformer(8, 2, 5, 3, blocks, bias=bias, kernel=kernel, gated=gated)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "position":
                base = (
                    1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0
                )
                base = 1.0 if name == "norm.weight" else base
                parameter.normal_(base, std)
    return model.double().eval()
