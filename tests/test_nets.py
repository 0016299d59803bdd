"""nets.py: output shapes for every supported size, the 64x64 extra layers, the
released-weights layout, and the one-sentence error for other sizes."""

import pytest
import torch

import nets


@pytest.mark.parametrize("size", nets.SUPPORTED_SIZES)
def test_encoder_decoder_shapes(size):
    torch.manual_seed(0)
    enc, dec = nets.Encoder(size, out_dim=23), nets.Decoder(size, latent_dim=13)
    x = torch.rand(5, *size)                      # (B, C, H, W)
    h = enc(x)
    assert h.shape == (5, 23)
    logits = dec(torch.randn(5, 13))
    assert logits.shape == (5, *size)
    assert torch.isfinite(logits).all() and torch.isfinite(h).all()


@pytest.mark.parametrize("size", [(1, 64, 64), (3, 64, 64)])
def test_mlp_shapes(size):
    enc, dec = nets.MLPEncoder(size, 20), nets.MLPDecoder(size, 10)
    assert enc(torch.rand(3, *size)).shape == (3, 20)
    assert dec(torch.randn(3, 10)).shape == (3, *size)
    # Chen et al. supp. H.1: 4096-1200-1200 / 1200-1200-1200-4096 for one channel.
    if size[0] == 1:
        assert [m.out_features for m in enc.net if isinstance(m, torch.nn.Linear)] == [1200, 1200, 20]
        assert [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)] == [1200, 1200, 1200, 4096]


def test_layer_layout_matches_released_jointvae_weights():
    # Key names and shapes of the JointVAE author's 32x32 and 64x64 state_dicts, as
    # listed in ../shared/README.md; jointvae.py maps them onto these modules.
    enc32, dec32 = nets.Encoder((1, 32, 32), 30), nets.Decoder((1, 32, 32), 20)
    convs = [m for m in enc32.features if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 32), (32, 64), (64, 64)]
    convts = [m for m in dec32.features if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convts] == [(64, 32), (32, 32), (32, 1)]
    enc64, dec64 = nets.Encoder((1, 64, 64), 15), nets.Decoder((1, 64, 64), 9)
    convs = [m for m in enc64.features if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 32), (32, 32), (32, 64), (64, 64)]
    convts = [m for m in dec64.features if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convts] == [(64, 64), (64, 32), (32, 32), (32, 1)]
    assert enc64.to_hidden[0].in_features == 1024 and enc64.to_hidden[0].out_features == 256
    assert dec64.to_features[0].in_features == 9 and dec64.to_features[2].out_features == 1024


@pytest.mark.parametrize("size", [(1, 28, 28), (1, 32, 64), (2, 32, 32), (1, 128, 128)])
def test_unsupported_size_is_one_clear_sentence(size):
    with pytest.raises(ValueError, match=r"not supported.*32x32 or 64x64"):
        nets.Encoder(size, 10)
    with pytest.raises(ValueError, match="not supported"):
        nets.Decoder(size, 10)


def test_device_flag():
    assert nets.to_device("cpu").type == "cpu"
    assert nets.to_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert nets.to_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert nets.to_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert nets.to_device("auto").type == "cuda"
    with pytest.raises(ValueError, match="cannot train"):
        nets.to_device("meta")
    with pytest.raises(ValueError, match="unknown device"):
        nets.to_device("tpu7")


def _conv_channels(module, kind):
    return [m.out_channels for m in module.modules() if isinstance(m, kind)]


def test_cascadevae_uses_the_supplement_net_and_jointvae_the_authors():
    import cascadevae
    import jointvae
    from torch import nn
    # Jeong & Song supp. B Table 2 (32x32): convs 32 -> 32 -> 64; Table 1 (64x64): 32-32-64-64.
    cv32 = cascadevae.CascadeVAE((1, 32, 32), 10, 10)
    assert _conv_channels(cv32.encoder, nn.Conv2d) == [32, 32, 64]
    assert _conv_channels(cv32.decoder, nn.ConvTranspose2d) == [32, 32, 1]
    cv64 = cascadevae.CascadeVAE((1, 64, 64), 6, 3)
    assert _conv_channels(cv64.encoder, nn.Conv2d) == [32, 32, 64, 64]
    assert _conv_channels(cv64.decoder, nn.ConvTranspose2d) == [64, 32, 32, 1]
    assert [m.out_features for m in cv32.encoder.modules() if isinstance(m, nn.Linear)] == [256, 20]
    assert [m.out_features for m in cv32.decoder.modules() if isinstance(m, nn.Linear)] == [256, 1024]
    # Dupont's released code (and weights): 32 -> 64 -> 64 on 32x32; --net dupont gives it to CascadeVAE.
    jv32 = jointvae.JointVAE((1, 32, 32), 10, [10], 0.67)
    assert _conv_channels(jv32.encoder, nn.Conv2d) == [32, 64, 64]
    assert _conv_channels(cascadevae.CascadeVAE((1, 32, 32), 10, 10, net="dupont").encoder, nn.Conv2d) == [32, 64, 64]
