"""SAEs spliced into a model: outputs unchanged, latents and error as sites for every
capture, the error-node convention, clear errors before any hook, the model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import gradlens
from gradlens.errors import LayerNotFoundError, RecorderStateError, SAEError
from gradlens.sae import SparseAutoencoder, splice

from . import zoo

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = "transformer.h.0.mlp"
BLOCK = "transformer.h.1"
LATENTS, ERROR = f"{MLP}.latents", f"{MLP}.error"


@pytest.fixture(scope="module")
def sae() -> SparseAutoencoder:
    return zoo.sparse_autoencoder()


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return zoo.token_ids(2, 6)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(model: torch.nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_the_model_computes_the_same_outputs_with_saes_spliced_in(tiny_gpt2, sae, ids):
    other = zoo.sparse_autoencoder(seed=1)
    with splice(tiny_gpt2, {MLP: sae, BLOCK: other}):
        spliced = _logits(tiny_gpt2, ids)
    torch.testing.assert_close(spliced, _logits(tiny_gpt2, ids), rtol=0, atol=1e-5)


def test_the_latents_and_the_error_are_recorded_by_name(tiny_gpt2, sae, ids):
    x = gradlens.extract(tiny_gpt2, ids, MLP)[MLP]
    with splice(tiny_gpt2, {MLP: sae}), gradlens.record(tiny_gpt2, [LATENTS, ERROR]) as rec:
        tiny_gpt2(ids)
    with torch.no_grad():
        torch.testing.assert_close(rec[LATENTS], sae.encode(x))
        torch.testing.assert_close(rec[ERROR], x - sae.decode(sae.encode(x)))


def test_a_transformer_lens_hook_name_is_a_hook_point_with_its_sites():
    # blocks.0.hook_resid_post is a TransformerBridge alias of the module blocks.0.hook_out
    bridge, sae, point = (
        zoo.transformer_bridge(),
        zoo.sparse_autoencoder(),
        "blocks.0.hook_resid_post",
    )
    ids = torch.tensor([[0, 5, 9, 3, 7]])
    _, cache = bridge.run_with_cache(ids, names_filter=[point])
    with splice(bridge, {point: sae}), gradlens.record(bridge, f"{point}.latents") as rec:
        bridge(ids)
    with torch.no_grad():
        torch.testing.assert_close(rec[f"{point}.latents"], sae.encode(cache[point]))


def test_extract_returns_the_latents_and_stops_after_them(tiny_gpt2, sae, ids):
    with splice(tiny_gpt2, {MLP: sae}):
        with gradlens.record(tiny_gpt2, "transformer.ln_f") as later:
            features = gradlens.extract(tiny_gpt2, ids, LATENTS)
    assert features[LATENTS].shape == (2, 6, sae.n_latents)
    assert "transformer.ln_f" not in later.activations  # the forward stopped at the latents


def test_sites_follow_their_hook_point_in_model_order(tiny_gpt2, sae):
    with splice(tiny_gpt2, {MLP: sae}):
        names = list(gradlens.select_layers(tiny_gpt2, [BLOCK, ERROR, "transformer.h.0.ln_2"]))
        everything = list(gradlens.select_layers(tiny_gpt2, "transformer.h.0.**"))
    assert names == ["transformer.h.0.ln_2", ERROR, BLOCK]
    assert everything[everything.index(f"{MLP}.dropout") + 1 :] == [LATENTS, ERROR]


def test_ablating_a_latent_moves_the_hook_output_by_the_latent_times_its_decoder_row(
    tiny_gpt2, sae, ids
):
    with splice(tiny_gpt2, {MLP: sae}):
        with gradlens.record(tiny_gpt2, [MLP, LATENTS]) as clean:
            tiny_gpt2(ids)
        latent = int(clean[LATENTS].amax((0, 1)).argmax())  # one that fires

        def ablate(z: Tensor) -> Tensor:
            return z.index_fill(-1, torch.tensor([latent]), 0.0)

        with gradlens.patch(tiny_gpt2, {LATENTS: ablate}), gradlens.record(tiny_gpt2, MLP) as rec:
            tiny_gpt2(ids)
    z = clean[LATENTS][..., latent, None]
    expected = -z * sae.W_dec[latent].detach()
    torch.testing.assert_close(rec[MLP] - clean[MLP], expected, rtol=1e-4, atol=1e-7)


def test_steering_a_latent_with_edits_add_adds_its_decoder_row(tiny_gpt2, sae, ids):
    vector = torch.zeros(sae.n_latents)
    vector[7] = 1.0
    with splice(tiny_gpt2, {MLP: sae}):
        with gradlens.record(tiny_gpt2, MLP) as clean:
            tiny_gpt2(ids)
        with (
            gradlens.patch(tiny_gpt2, {LATENTS: gradlens.edits.add(vector, scale=3.0)}),
            gradlens.record(tiny_gpt2, MLP) as steered,
        ):
            tiny_gpt2(ids)
    expected = (3.0 * sae.W_dec[7].detach()).expand_as(clean[MLP])
    torch.testing.assert_close(steered[MLP] - clean[MLP], expected, rtol=1e-4, atol=1e-6)


def test_an_edit_of_the_latents_leaves_the_error_as_computed_from_the_unedited_latents(
    tiny_gpt2, sae, ids
):
    with splice(tiny_gpt2, {MLP: sae}):
        with gradlens.record(tiny_gpt2, ERROR) as clean:
            tiny_gpt2(ids)
        with (
            gradlens.patch(tiny_gpt2, {LATENTS: gradlens.edits.zero()}),
            gradlens.record(tiny_gpt2, [ERROR, MLP]) as ablated,
        ):
            tiny_gpt2(ids)
    torch.testing.assert_close(ablated[ERROR], clean[ERROR], rtol=0, atol=0)
    # the hook point then holds decode(0) + error
    expected = sae.b_dec.detach() + clean[ERROR]
    torch.testing.assert_close(ablated[MLP], expected)


def test_gradients_reach_the_latents_through_the_decoder_and_the_error_directly(
    tiny_gpt2, sae, ids
):
    with splice(tiny_gpt2, {MLP: sae}):
        with gradlens.record(tiny_gpt2, [MLP, LATENTS, ERROR]) as rec:
            score = tiny_gpt2(ids).logits[:, -1, 3]
            rec.grad(score)
    towards_output = rec.gradients[MLP]
    torch.testing.assert_close(rec.gradients[ERROR], towards_output)
    torch.testing.assert_close(
        rec.gradients[LATENTS], towards_output @ sae.W_dec.detach().T, rtol=1e-5, atol=1e-9
    )


def test_activation_patching_patches_the_latents_of_the_clean_run(tiny_gpt2, sae, ids):
    clean, corrupted = ids[:1], ids[1:]

    def metric(output):
        return output.logits[:, -1, 3]

    with splice(tiny_gpt2, {MLP: sae}):
        effect = gradlens.activation_patching(tiny_gpt2, clean, corrupted, [LATENTS], metric)
        z_clean = gradlens.extract(tiny_gpt2, clean, LATENTS)[LATENTS]
        with torch.no_grad(), gradlens.patch(tiny_gpt2, {LATENTS: z_clean}):
            expected = metric(tiny_gpt2(corrupted))
    torch.testing.assert_close(effect, expected.reshape(1, 1))


def test_a_duck_typed_sae_without_parameters_or_width_works(tiny_gpt2, ids):
    class Halves:
        """encode/decode only: the latents are the two halves of each vector, doubled."""

        def encode(self, x: Tensor) -> Tensor:
            return 2 * x

        def decode(self, z: Tensor) -> Tensor:
            return z / 2

    with splice(tiny_gpt2, {MLP: Halves()}):
        features = gradlens.extract(tiny_gpt2, ids, [MLP, LATENTS, ERROR])
        spliced = _logits(tiny_gpt2, ids)
    torch.testing.assert_close(features[LATENTS], 2 * features[MLP])
    assert features[ERROR].abs().max() == 0
    torch.testing.assert_close(spliced, _logits(tiny_gpt2, ids), rtol=0, atol=1e-5)


def test_leaving_the_block_takes_off_the_hooks_and_the_names(tiny_gpt2, sae, ids):
    before = (_hooks(tiny_gpt2), list(dict(tiny_gpt2.named_modules())))
    with pytest.raises(RuntimeError, match="inside"):
        with splice(tiny_gpt2, {MLP: sae}):
            assert _hooks(tiny_gpt2) == before[0] + 1
            raise RuntimeError("inside")
    assert (_hooks(tiny_gpt2), list(dict(tiny_gpt2.named_modules()))) == before
    with pytest.raises(LayerNotFoundError):
        gradlens.select_layers(tiny_gpt2, LATENTS)


def test_the_model_and_the_sae_are_untouched(tiny_gpt2, sae, ids):
    state = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    sae_state = {k: v.clone() for k, v in sae.state_dict().items()}
    with splice(tiny_gpt2, {MLP: sae}):
        tiny_gpt2(ids).logits.sum().backward()
    for parameter in [*tiny_gpt2.parameters(), *sae.parameters()]:
        parameter.grad = None  # the backward above was the user's own
    assert all(torch.equal(v, state[k]) for k, v in tiny_gpt2.state_dict().items())
    assert all(torch.equal(v, sae_state[k]) for k, v in sae.state_dict().items())
    assert "sae" not in dict(tiny_gpt2.named_modules())


def test_an_unknown_hook_point_is_refused_with_suggestions(tiny_gpt2, sae):
    with pytest.raises(LayerNotFoundError, match="did you mean 'transformer.h.0.mlp'"):
        splice(tiny_gpt2, {"transformer.h.0.mpl": sae})
    assert _hooks(tiny_gpt2) == 0


def test_an_unknown_site_name_suggests_the_sites(tiny_gpt2, sae, ids):
    with splice(tiny_gpt2, {MLP: sae}), pytest.raises(LayerNotFoundError, match=repr(LATENTS)):
        gradlens.extract(tiny_gpt2, ids, f"{MLP}.latent")


def test_an_sae_without_encode_or_decode_is_refused(tiny_gpt2):
    class EncoderOnly(torch.nn.Linear):
        def encode(self, x: Tensor) -> Tensor:
            return self(x)

    with pytest.raises(SAEError, match=r"\(EncoderOnly\) has no decode method"):
        splice(tiny_gpt2, {MLP: EncoderOnly(32, 32)})
    assert _hooks(tiny_gpt2) == 0


def test_a_hook_point_selecting_several_modules_is_refused(tiny_gpt2, sae):
    with pytest.raises(SAEError, match="selects 2 modules"):
        splice(tiny_gpt2, {"transformer.h.*.mlp": sae})


def test_an_sae_of_another_width_is_refused_in_the_forward_without_a_trace(tiny_gpt2, ids):
    narrow = SparseAutoencoder(16, 8)
    with pytest.raises(SAEError, match="width 16.*width 32"):
        with splice(tiny_gpt2, {MLP: narrow}):
            tiny_gpt2(ids)
    assert _hooks(tiny_gpt2) == 0


def test_saes_must_be_a_mapping(tiny_gpt2, sae):
    with pytest.raises(TypeError, match="mapping"):
        splice(tiny_gpt2, [sae])  # type: ignore[arg-type]


def test_a_splice_cannot_be_entered_twice(tiny_gpt2, sae):
    spliced = splice(tiny_gpt2, {MLP: sae})
    with spliced, pytest.raises(RecorderStateError, match="already active"):
        spliced.__enter__()
    assert _hooks(tiny_gpt2) == 0
