"""The logit lens and next-token losses against TransformerLens; token_names against the
task vocabularies."""

import numpy as np
import pytest

import toymech as tm
from toymech.analysis import lens
from toymech.tasks import grokking, reverse, sum_digits, text_sum

from random_params import random_params

BASE = tm.ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=11, d_vocab_out=9, n_ctx=8)
CONFIGS = {"LN": BASE, "LNPre": BASE.replace(normalization_type="LNPre"),
           "no norm": BASE.replace(normalization_type=None), "attn-only LN": BASE.replace(d_mlp=None, n_layers=3)}
TOKENS = np.random.default_rng(0).integers(0, 9, (3, 8)).astype(np.int32)


@pytest.fixture(scope="module", params=list(CONFIGS))
def tl_run(request):
    """(cfg, TL model, our params, TL cache, our activations of lens_sites with incl_mid)."""
    pytest.importorskip("transformer_lens")
    import torch

    from tl_reference import params_from_tl, tl_model

    cfg = CONFIGS[request.param]
    model = tl_model(cfg, seed=2)
    _, cache = model.run_with_cache(torch.tensor(TOKENS))
    params = params_from_tl(model)
    logits, acts = tm.apply(cfg, params, TOKENS, capture=lens.lens_sites(cfg, incl_mid=not cfg.attn_only))
    return cfg, model, params, cache, acts, logits


def _unembed(model, resid):
    return (resid @ model.W_U + model.b_U).detach().numpy()


def test_logit_lens_matches_transformer_lens(tl_run):
    """TL 3.x's accumulated_resid(apply_ln=True) applies ln_final (weight and bias too) to each
    entry with recomputed statistics."""
    cfg, model, params, cache, acts, logits = tl_run
    for incl_mid in (False, True) if not cfg.attn_only else (False,):
        got, labels = lens.logit_lens(cfg, params, acts, incl_mid=incl_mid)
        resid, tl_labels = cache.accumulated_resid(apply_ln=True, incl_mid=incl_mid, return_labels=True)
        assert labels == tuple(tl_labels)
        assert got.shape == (len(labels), 3, 8, cfg.d_vocab_out)
        np.testing.assert_allclose(got, _unembed(model, resid), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[-1], logits, rtol=1e-5, atol=1e-5)  # the last entry is the model's output


def test_logit_lens_with_the_forward_passes_final_scale(tl_run):
    """recompute_ln=False: TL's apply_ln_to_stack with the cached ln_final scale (it leaves
    ln_final.w and .b to a folded W_U and b_U; here they are applied)."""
    cfg, model, params, cache, acts, logits = tl_run
    got, _ = lens.logit_lens(cfg, params, acts, recompute_ln=False)
    ref = cache.apply_ln_to_stack(cache.accumulated_resid(), recompute_ln=False)
    if cfg.normalization_type == "LN":
        ref = ref * model.ln_final.w + model.ln_final.b
    np.testing.assert_allclose(got, _unembed(model, ref), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[-1], logits, rtol=1e-5, atol=1e-5)
    if cfg.normalization_type is not None:  # the two modes differ before the last entry
        assert not np.allclose(got[0], lens.logit_lens(cfg, params, acts)[0][0], atol=1e-3)


def test_logit_lens_of_a_folded_transformer_lens_model():
    """The brief's reference exactly: TL with ln_final folded into W_U and b_U (LNPre), then
    accumulated_resid(apply_ln=True) @ W_U + b_U, against our lens of the unfolded LN model."""
    pytest.importorskip("transformer_lens")
    import torch
    from transformer_lens import HookedTransformer

    from tl_reference import params_from_tl, tl_config, tl_model

    model = tl_model(BASE, seed=4)
    params = params_from_tl(model)
    folded = HookedTransformer(tl_config(BASE))
    folded.load_and_process_state_dict(model.state_dict(), fold_ln=True, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False)
    _, cache = folded.run_with_cache(torch.tensor(TOKENS))
    _, acts = tm.apply(BASE, params, TOKENS, capture=lens.lens_sites(BASE))
    got, _ = lens.logit_lens(BASE, params, acts)
    np.testing.assert_allclose(got, _unembed(folded, cache.accumulated_resid(apply_ln=True)), rtol=1e-4, atol=1e-4)


def test_logit_lens_names_what_is_missing():
    params = random_params(BASE)
    _, acts = tm.apply(BASE, params, TOKENS, capture=("blocks.0.hook_resid_pre",))
    with pytest.raises(ValueError, match="blocks.1.hook_resid_pre.*capture="):
        lens.logit_lens(BASE, params, acts)
    assert lens.lens_sites(BASE) == ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre",
                                     "blocks.1.hook_resid_post", "ln_final.hook_scale")


def test_losses_match_transformer_lens(tl_run):
    import torch

    cfg, model, params, _, _, logits = tl_run
    ref = model(torch.tensor(TOKENS), return_type="loss", loss_per_token=True).detach().numpy()  # [b, p - 1]
    per_token = lens.forward(cfg, params, TOKENS, return_type="loss", loss_per_token=True)
    assert per_token.shape == (3, 7)
    np.testing.assert_allclose(per_token, ref, rtol=1e-5, atol=1e-5)
    mean = model(torch.tensor(TOKENS), return_type="loss").item()
    assert float(lens.forward(cfg, params, TOKENS, return_type="loss")) == pytest.approx(mean, rel=1e-5)
    both_logits, both_loss = lens.forward(cfg, params, TOKENS, return_type="both", loss_per_token=True)
    np.testing.assert_allclose(both_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both_loss, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lens.forward(cfg, params, TOKENS), logits, rtol=1e-5, atol=1e-6)


def test_next_token_loss_by_hand_and_its_errors():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]], np.float32))
    tokens = np.array([[2, 0, 2]])
    np.testing.assert_allclose(lens.next_token_loss(logits, tokens, per_token=True),
                               [[-np.log(0.5), -np.log(0.8)]], rtol=1e-6)
    assert float(lens.next_token_loss(logits, tokens)) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"ids outside \[0, 3\), e.g. 3"):
        lens.next_token_loss(logits, np.array([[0, 3, 1]]))
    with pytest.raises(ValueError, match=r"ids outside \[0, 3\), e.g. -1"):
        lens.next_token_loss(logits, np.array([[0, 1, -1]]))
    lens.next_token_loss(logits, np.array([[7, 1, 2]]))  # the first token is never a target
    with pytest.raises(ValueError, match="at least 2 positions"):
        lens.next_token_loss(logits[:, :1], tokens[:, :1])
    with pytest.raises(ValueError, match="same batch and pos"):
        lens.next_token_loss(logits, tokens[:, :2])
    with pytest.raises(ValueError, match=r"return_type must be one of \('logits', 'loss', 'both'\), got 'str'"):
        lens.forward(BASE, random_params(BASE), TOKENS, return_type="str")
    with pytest.raises(ValueError, match="call toymech.apply"):
        lens.forward(BASE, random_params(BASE), TOKENS, capture="all")


def test_token_names_of_the_task_vocabularies():
    seq = reverse.all_sequences()[[0, 27]]
    assert lens.token_names(reverse.VOCAB, seq[1]) == ["BOS", "0", "0", "0", "0", "0", "1", "2", "3",
                                                       "0", "3", "2", "1", "1", "1", "1", "1"]
    assert lens.token_names(reverse.VOCAB, 4) == "BOS"
    assert len(lens.token_names(reverse.VOCAB, seq)) == 2
    ids = text_sum.encode("103 + 40 = ?")
    assert "".join(lens.token_names(text_sum.VOCAB, ids)) == text_sum.decode(ids) == "103 + 40 = ?"
    assert lens.token_names(text_sum.VOCAB, [0, 12]) == ["<pad>", "+"]
    assert "".join(lens.token_names(sum_digits.VOCAB, [2, 9, 10, 1, 11, 4])) == "29+1=4"
    task = grokking.AdditionTask(7)
    assert lens.token_names(task.vocab, grokking.all_inputs(task)[-1]) == ["6", "6", "="]
    with pytest.raises(ValueError, match=r"id 5 is outside the vocabulary of 5 tokens"):
        lens.token_names(reverse.VOCAB, [0, 5])
    with pytest.raises(ValueError, match="id -1 is outside"):
        lens.token_names(reverse.VOCAB, [-1])
    with pytest.raises(ValueError, match="must be integer ids"):
        lens.token_names(reverse.VOCAB, [0.5])
