"""Hugging Face GPT-2 weights load into lmfuse's transformer and compute the same logits."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmfuse.errors import LmfuseError
from lmfuse.interop import gpt2_config, load_gpt2
from lmfuse.models import build_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = (
    b"In the beginning God created the heaven and the earth. And the earth was without form, "
    b"and void; and darkness was upon the face of the deep."
)
VOCAB = 997
LENGTH = 64


@pytest.fixture(scope="module")
def hf_model():
    """A randomly initialised GPT-2 with odd sizes; every weight (LayerNorms and biases
    included) is perturbed so that a mix-up of any tensor shows in the logits."""
    config = transformers.GPT2Config(
        n_layer=3, n_embd=72, n_head=6, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def ids():
    """Token ids from real English text (bytes mod vocab); row 2 is the text reversed."""
    data = np.frombuffer(TEXT, np.uint8).astype(np.int64) % VOCAB
    return np.stack([data[:LENGTH], data[::-1][:LENGTH]])


@pytest.fixture(scope="module")
def hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(torch.tensor(ids)).logits.numpy()


def lmfuse_logits(model_cfg, params, ids):
    model = build_model(model_cfg, vocab_size=params["wte"]["embedding"].shape[0])
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32)))


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    # float32 sums in another order (XLA's and torch's thread counts vary with the machine's
    # load) move logits of size ~5 by up to ~1.5e-4; a wrong weight moves them by far more.
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_config_describes_gpt2(hf_model):
    c = gpt2_config(hf_model.config)
    assert (c.name, c.norm, c.positions, c.activation) == ("transformer", "pre", "learned", "gelu_new")
    assert (c.emb_dim, c.num_layers, c.num_heads, c.mlp_dim, c.max_len) == (72, 3, 6, 288, LENGTH)
    assert c.tie_embeddings and c.use_bias and c.layer_norm_epsilon == hf_model.config.layer_norm_epsilon


def test_state_dict_logits_match_hf(hf_model, ids, hf_logits):
    model_cfg, params = load_gpt2(hf_model.state_dict(), hf_config=hf_model.config)
    ours = lmfuse_logits(model_cfg, params, ids)
    assert np.abs(hf_logits).max() > 1.0  # the comparison is not between near-zero numbers
    assert_close(ours, hf_logits)


def test_safetensors_and_bin_files_load(hf_model, ids, hf_logits, tmp_path):
    pytest.importorskip("safetensors")
    hf_model.save_pretrained(tmp_path / "st", safe_serialization=True)
    for source in (tmp_path / "st", tmp_path / "st" / "model.safetensors"):
        model_cfg, params = load_gpt2(source)
        assert_close(lmfuse_logits(model_cfg, params, ids), hf_logits)

    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hf_model.config.to_json_file(tmp_path / "bin" / "config.json")
    model_cfg, params = load_gpt2(tmp_path / "bin" / "pytorch_model.bin")
    assert_close(lmfuse_logits(model_cfg, params, ids), hf_logits)


def test_state_dict_without_config_is_a_clear_error(hf_model):
    with pytest.raises(LmfuseError, match="hf_config"):
        load_gpt2(hf_model.state_dict())


def test_missing_torch_names_the_install_command(hf_model, tmp_path, monkeypatch):
    torch.save(hf_model.state_dict(), tmp_path / "model.bin")
    hf_model.config.to_json_file(tmp_path / "config.json")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(LmfuseError, match=r"pip install 'lmfuse\[interop\]'"):
        load_gpt2(tmp_path / "model.bin")


@pytest.mark.parametrize("beams", [1, 4])
def test_greedy_and_beam_search_choose_hf_generates_tokens(hf_model, ids, beams):
    # The same weights through lmfuse's compiled decoders and HF `generate`. No EOS, so every
    # beam has the same length and both searches rank by the sum of log-probs alone.
    from lmfuse.decode import beam_search, lm_decode_step, sample
    from lmfuse.tokens import PAD_ID

    model_cfg, params = load_gpt2(hf_model.state_dict(), hf_config=hf_model.config)
    step = lm_decode_step(build_model(model_cfg, vocab_size=VOCAB))
    prompt, new = ids[:, :16], 12
    config = transformers.GenerationConfig(
        max_new_tokens=new, num_beams=beams, do_sample=False, use_cache=True, eos_token_id=None,
        pad_token_id=PAD_ID, suppress_tokens=[PAD_ID])  # lmfuse's decoders never emit PAD
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor(prompt), attention_mask=torch.ones_like(
            torch.tensor(prompt)), generation_config=config)[:, prompt.shape[1]:].numpy()
    batch = {"prompt": jnp.asarray(prompt, jnp.int32)}
    if beams == 1:
        ours = sample(step, params, batch, jax.random.key(0), max_new_tokens=new,
                      temperature=0.0, eos_id=None).tokens[:, 0]
    else:
        ours = beam_search(step, params, batch, beam_size=beams, max_new_tokens=new,
                           eos_id=None).tokens[:, 0]
    assert theirs.shape == (2, new)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
