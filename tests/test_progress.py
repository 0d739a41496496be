"""Progress measures against independent computations: the grokking notebook's
restricted / excluded loss, cosine coefficients and Fourier norms written out
with TransformerLens and numpy, one checkpoint at a time; the factored grid
forward pass against toymech's own forward pass; Gini against its
mean-absolute-difference definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toymech as tm
from toymech import interventions as iv
from toymech.analysis import fourier, progress
from toymech.tasks import grokking

from random_params import random_params

P = 7
KEY_FREQS = (1, 3)


def _cfg(**changes):
    return grokking.model_config(grokking.AdditionTask(P), d_model=16, n_heads=2, d_head=8, d_mlp=24).replace(**changes)


def test_gini_matches_mean_absolute_difference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 9))
    want = [np.abs(r[:, None] - r[None, :]).sum() / (2 * len(r) ** 2 * r.mean()) for r in np.abs(x)]
    np.testing.assert_allclose(progress.gini(x.astype(np.float32)), want, rtol=1e-5)
    np.testing.assert_allclose(progress.gini(x.T.astype(np.float32), axis=0), want, rtol=1e-5)
    np.testing.assert_allclose(progress.gini(np.zeros(5, np.float32)), 0.0)
    np.testing.assert_allclose(progress.gini(np.eye(6, dtype=np.float32)[0]), 5 / 6, rtol=1e-6)


def test_sum_squared_weights_counts_every_parameter():
    params = random_params(_cfg(), seed=1)
    want = sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tm.flatten_params(params).values())
    np.testing.assert_allclose(progress.sum_squared_weights(params), want, rtol=1e-5)


@pytest.mark.parametrize("changes", [dict(), dict(act_fn="gelu", attention_dir="bidirectional")])
def test_grid_forward_equals_the_model_at_the_last_position(changes):
    cfg = _cfg(**changes)
    params = random_params(cfg, seed=2)
    tokens = grokking.all_inputs(grokking.AdditionTask(P))
    logits, acts = tm.apply(cfg, params, tokens, capture=("blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"))
    out = grokking.grid_forward(cfg, params, P)
    np.testing.assert_allclose(out.logits, logits[:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pre, acts["blocks.0.mlp.hook_pre"][:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.post, acts["blocks.0.mlp.hook_post"][:, -1], rtol=1e-5, atol=1e-5)


def test_grid_forward_rejects_models_it_cannot_factor():
    with pytest.raises(ValueError, match="normalization_type"):
        grokking.grid_forward(_cfg().replace(normalization_type="LN"), None, P)
    with pytest.raises(ValueError, match="n_layers=2"):
        grokking.grid_forward(_cfg().replace(n_layers=2), None, P)


def test_excluded_logits_equal_patching_the_neuron_activations():
    """With non-zero biases: removing the key-frequency part of hook_post inside
    the forward pass gives exactly `excluded_logits`."""
    cfg = _cfg()
    params = random_params(cfg, seed=3)
    tokens = grokking.all_inputs(grokking.AdditionTask(P))
    out = grokking.grid_forward(cfg, params, P)
    dirs = fourier.sum_frequency_directions(P, KEY_FREQS).reshape(-1, P * P)
    W_logit = progress.neuron_logit_map(params)
    removed = np.asarray(out.post) - np.asarray(dirs).T @ (np.asarray(dirs) @ np.asarray(out.post))
    value = jnp.zeros((P * P, 3, cfg.d_mlp)).at[:, -1].set(removed)
    patched, _ = tm.apply(cfg, params, tokens, intervention=iv.patch("blocks.0.mlp.hook_post", value,
                                                                     pos=np.array([False, False, True])))
    np.testing.assert_allclose(progress.excluded_logits(out.post, out.logits, W_logit, dirs), patched[:, -1],
                               rtol=1e-5, atol=1e-5)


# --- the notebook's measures, written out with TransformerLens -------------------------------------------


def _tl_measures(model, dataset, key_freqs):
    """One checkpoint's measures the way the grokking notebook computes them."""
    import torch

    tokens = torch.tensor(dataset.tokens, dtype=torch.long)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    train, test = torch.tensor(dataset.train), torch.tensor(dataset.test)

    def loss(logits, rows):
        lp = logits[rows].to(torch.float64).log_softmax(-1)
        return -lp.gather(-1, labels[rows][:, None])[:, 0].mean().item()

    def key_part(acts):  # sum over key frequencies of the projections on cos / sin (w (a+b))
        out = torch.zeros_like(acts)
        a, b = torch.arange(P)[:, None], torch.arange(P)[None, :]
        for k in key_freqs:
            for fn in (torch.cos, torch.sin):
                v = fn(2 * torch.pi * k / P * (a + b)).reshape(-1, 1)
                v = v / v.norm()
                out += (acts * v).sum(0) * v
        return out

    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        logits = logits[:, -1]
        acts = cache["post", 0, "mlp"][:, -1]
        W_out, W_U = model.blocks[0].mlp.W_out, model.unembed.W_U
        restricted = (acts.mean(0) + key_part(acts)) @ W_out @ W_U
        restricted += logits.mean(0, keepdim=True) - restricted.mean(0, keepdim=True)
        excluded = ((acts - key_part(acts)) @ W_out + cache["resid_mid", 0][:, -1]) @ W_U
        cube = logits.reshape(P, P, P).numpy().astype(np.float64)
        a, b, c = np.arange(P)[:, None, None], np.arange(P)[None, :, None], np.arange(P)[None, None, :]
        cos_coeffs = []
        for k in range(1, P // 2 + 1):
            pred = np.cos(2 * np.pi * k / P * (a + b - c))
            cos_coeffs.append(np.sum(cube * pred / np.linalg.norm(pred)))
        basis = [np.ones(P)]  # the notebook's basis: sin then cos per frequency, rows normalised
        for k in range(1, P // 2 + 1):
            basis += [np.sin(2 * np.pi * k * np.arange(P) / P), np.cos(2 * np.pi * k * np.arange(P) / P)]
        basis = np.stack(basis)
        basis /= np.linalg.norm(basis, axis=1, keepdims=True)
        W_E = model.embed.W_E[:P].numpy().astype(np.float64)
        W_logit = (W_out @ W_U).numpy().astype(np.float64)

        def gini(v):
            return np.abs(v[:, None] - v[None, :]).sum() / (2 * len(v) ** 2 * v.mean())

        return dict(
            train_loss=loss(logits, train), test_loss=loss(logits, test),
            restricted_loss=loss(restricted, test), excluded_loss=loss(excluded, train),
            cos_coefficients=np.array(cos_coeffs),
            sum_squared_weights=sum(float((p.double() ** 2).sum()) for p in model.parameters()),
            gini_embedding=gini(np.linalg.norm(basis @ W_E, axis=1)),
            gini_logit=gini(np.linalg.norm(W_logit @ basis.T, axis=0)))


def test_grokking_progress_matches_the_notebooks_measures_per_checkpoint():
    pytest.importorskip("transformer_lens")
    from tl_reference import params_from_tl, tl_model

    cfg = _cfg()
    dataset = grokking.make_dataset(grokking.AdditionTask(P), 0.5, seed=0)
    models = [tl_model(cfg, seed=s, randomize_biases=False) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params_from_tl(m) for m in models])
    # inside jit (as research code would call it), 2 checkpoints vmapped + a remainder of 1
    got = jax.jit(lambda s: grokking.grokking_progress(cfg, s, dataset, KEY_FREQS, batch_size=2))(stacked)
    for i, model in enumerate(models):
        want = _tl_measures(model, dataset, KEY_FREQS)
        for name, value in want.items():
            np.testing.assert_allclose(np.asarray(getattr(got, name)[i]), value, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} at checkpoint {i}")


def test_grokking_progress_checks_its_arguments():
    cfg = _cfg()
    dataset = grokking.make_dataset(grokking.AdditionTask(P), 0.5, seed=0)
    stacked = jax.tree.map(lambda x: x[None], random_params(cfg))
    with pytest.raises(ValueError, match="key frequencies"):
        grokking.grokking_progress(cfg, stacked, dataset, [0, 4])
    with pytest.raises(ValueError, match="split"):
        grokking.grokking_progress(cfg, stacked, dataset, [1], restricted_split="val")
