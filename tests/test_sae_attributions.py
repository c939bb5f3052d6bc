"""feature_attributions: what every SAE latent and error node contributes to a target."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import gradlens
from gradlens.errors import InterventionError, LayerNotFoundError, SAEError, TargetError
from gradlens.sae import feature_attributions, splice

from . import zoo

pytestmark = pytest.mark.usefixtures("one_thread")

MLP0, MLP1 = "transformer.h.0.mlp", "transformer.h.1.mlp"
NEXT = 5  # the next-token id explained


@pytest.fixture(scope="module")
def saes() -> dict[str, torch.nn.Module]:
    return {MLP0: zoo.sparse_autoencoder(), MLP1: zoo.sparse_autoencoder(n_latents=40, seed=1)}


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return zoo.token_ids(2, 6)


def _by_hand(model, ids, saes, target_of):
    """Activations and gradients of every site, from one recorded forward and backward."""
    sites = [f"{hp}.{node}" for hp in saes for node in ("latents", "error")]
    with splice(model, saes), gradlens.record(model, sites) as rec:
        rec.grad(target_of(model(ids)))
    return rec


def _start_score(model, ids, saes, hook_point):
    """The target with ``hook_point``'s latents and error at zero (its output decode(0))."""
    zero = gradlens.edits.zero()
    edits = {f"{hook_point}.latents": zero, f"{hook_point}.error": zero}
    with torch.no_grad(), splice(model, saes), gradlens.patch(model, edits):
        return model(ids).logits[:, -1, NEXT]


def test_shapes_per_hook_point(tiny_gpt2, saes, ids):
    result = feature_attributions(tiny_gpt2, ids, NEXT, saes=saes)
    assert list(result) == [MLP0, MLP1]
    assert result[MLP0].latents.shape == (2, 6, 48) and result[MLP0].error.shape == (2, 6)
    assert result[MLP1].latents.shape == (2, 6, 40) and result[MLP1].activations.shape == (2, 6, 40)


def test_k_targets_per_sample_add_a_dimension_after_the_batch(tiny_gpt2, saes, ids):
    result = feature_attributions(tiny_gpt2, ids, [[5, 6], [7, 8]], saes=saes)[MLP1]
    single = feature_attributions(tiny_gpt2, ids, [6, 8], saes=saes)[MLP1]
    assert result.latents.shape == (2, 2, 6, 40) and result.error.shape == (2, 2, 6)
    torch.testing.assert_close(result.latents[:, 1], single.latents)
    torch.testing.assert_close(result.error[:, 1], single.error)


def test_input_x_gradient_is_the_latents_times_their_gradient(tiny_gpt2, saes, ids):
    result = feature_attributions(tiny_gpt2, ids, NEXT, saes=saes)
    rec = _by_hand(tiny_gpt2, ids, saes, lambda out: out.logits[:, -1, NEXT])
    for hp in saes:
        latents, error = f"{hp}.latents", f"{hp}.error"
        torch.testing.assert_close(
            result[hp].latents, rec[latents] * rec.gradients[latents], rtol=1e-5, atol=1e-10
        )
        torch.testing.assert_close(
            result[hp].error, (rec[error] * rec.gradients[error]).sum(-1), rtol=1e-5, atol=1e-10
        )


def test_an_int_target_is_the_next_token_logit_at_the_last_position(tiny_gpt2, saes, ids):
    by_id = feature_attributions(tiny_gpt2, ids, NEXT, saes=saes)[MLP0]
    by_target = feature_attributions(tiny_gpt2, ids, gradlens.targets.token(NEXT), saes=saes)[MLP0]
    torch.testing.assert_close(by_id.latents, by_target.latents, rtol=0, atol=0)


def test_integrated_gradients_are_complete_from_zero_latents_and_error(tiny_gpt2, saes, ids):
    result = feature_attributions(
        tiny_gpt2, ids, NEXT, saes=saes, method="integrated_gradients", steps=16
    )
    with torch.no_grad():
        end = tiny_gpt2(ids).logits[:, -1, NEXT]
    for hp in saes:
        change = end - _start_score(tiny_gpt2, ids, saes, hp)
        torch.testing.assert_close(result[hp].total(), change, rtol=1e-4, atol=0)


def test_integrated_gradients_in_chunks_equal_one_forward(tiny_gpt2, saes, ids):
    options = {"saes": saes, "method": "integrated_gradients", "steps": 4}
    whole = feature_attributions(tiny_gpt2, ids, NEXT, **options)
    chunked = feature_attributions(tiny_gpt2, ids, NEXT, batch_size=6, **options)
    for hp in saes:
        torch.testing.assert_close(chunked[hp].latents, whole[hp].latents)
        torch.testing.assert_close(chunked[hp].error, whole[hp].error)


@pytest.mark.parametrize("method", ["input_x_gradient", "integrated_gradients"])
def test_every_hook_point_is_attributed_in_one_forward_to_the_logits(tiny_gpt2, saes, ids, method):
    heads = []
    handle = tiny_gpt2.lm_head.register_forward_hook(lambda m, i, o: heads.append(len(o)))
    try:
        feature_attributions(tiny_gpt2, ids, NEXT, saes=saes, method=method, steps=4)
    finally:
        handle.remove()
    # integrated gradients: both hook points x 4 steps x 2 samples stacked in one forward
    # (its inference forward for the latents at the input stops after the last hook point)
    assert heads == ([2] if method == "input_x_gradient" else [2 * 4 * 2])


def test_attribution_patching_is_the_first_order_estimate_at_the_baseline(tiny_gpt2, saes, ids):
    baseline = zoo.token_ids(2, 6, seed=3)
    result = feature_attributions(
        tiny_gpt2, ids, NEXT, saes=saes, method="attribution_patching", baseline=baseline
    )
    clean = _by_hand(tiny_gpt2, ids, saes, lambda out: out.logits[:, -1, NEXT])
    corrupt = _by_hand(tiny_gpt2, baseline, saes, lambda out: out.logits[:, -1, NEXT])
    for hp in saes:
        latents, error = f"{hp}.latents", f"{hp}.error"
        expected = (clean[latents] - corrupt[latents]) * corrupt.gradients[latents]
        torch.testing.assert_close(result[hp].latents, expected, rtol=1e-5, atol=1e-10)
        expected = ((clean[error] - corrupt[error]) * corrupt.gradients[error]).sum(-1)
        torch.testing.assert_close(result[hp].error, expected, rtol=1e-5, atol=1e-10)


def test_attribution_patching_per_position_agrees_with_gradlens_attribution_patching(
    tiny_gpt2, saes, ids
):
    clean, corrupted = ids[:1], ids[1:]
    result = feature_attributions(
        tiny_gpt2, clean, NEXT, saes=saes, method="attribution_patching", baseline=corrupted
    )[MLP1]
    sites = [f"{MLP1}.latents", f"{MLP1}.error"]
    with splice(tiny_gpt2, saes):
        estimate = gradlens.attribution_patching(
            tiny_gpt2, clean, corrupted, sites, lambda o: o.logits[:, -1, NEXT], positions="each"
        )
    torch.testing.assert_close(result.latents.sum(-1)[0], estimate[0], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(result.error[0], estimate[1], rtol=1e-5, atol=1e-10)


def test_the_model_and_the_saes_are_untouched(tiny_gpt2, saes, ids):
    flags = [p.requires_grad for s in saes.values() for p in s.parameters()]
    feature_attributions(tiny_gpt2, ids, NEXT, saes=saes, method="integrated_gradients", steps=2)
    assert [p.requires_grad for s in saes.values() for p in s.parameters()] == flags
    assert all(p.grad is None for s in saes.values() for p in s.parameters())
    assert all(p.grad is None for p in tiny_gpt2.parameters())
    assert not any(m._forward_hooks for m in tiny_gpt2.modules())


def test_an_unknown_method_is_refused(tiny_gpt2, saes, ids):
    with pytest.raises(ValueError, match="method must be one of"):
        feature_attributions(tiny_gpt2, ids, NEXT, saes=saes, method="saliency")  # type: ignore[arg-type]


def test_attribution_patching_needs_a_baseline_and_only_it_takes_one(tiny_gpt2, saes, ids):
    with pytest.raises(ValueError, match="needs baseline="):
        feature_attributions(tiny_gpt2, ids, NEXT, saes=saes, method="attribution_patching")
    with pytest.raises(ValueError, match="baseline= is for"):
        feature_attributions(tiny_gpt2, ids, NEXT, saes=saes, baseline=ids)


def test_a_baseline_of_another_shape_is_refused(tiny_gpt2, saes, ids):
    with pytest.raises(InterventionError, match=r"\(2, 6\).*\(2, 5\)"):
        feature_attributions(
            tiny_gpt2, ids, NEXT, saes=saes, method="attribution_patching", baseline=ids[:, :5]
        )


def test_bad_hook_points_saes_and_targets_are_refused(tiny_gpt2, saes, ids):
    with pytest.raises(LayerNotFoundError, match="did you mean"):
        feature_attributions(tiny_gpt2, ids, NEXT, saes={"transformer.h.0.mpl": saes[MLP0]})
    with pytest.raises(SAEError, match="has no encode or decode"):
        feature_attributions(tiny_gpt2, ids, NEXT, saes={MLP0: object()})
    with pytest.raises(TargetError, match="64 is out of range"):
        feature_attributions(tiny_gpt2, ids, 64, saes=saes)
