"""The papers' networks: one convolutional encoder and one decoder, shared by all methods.

Dupont (2018), appendix B, gives the architecture that JointVAE uses; Jeong & Song
(2019), supplement B (Tables 1-2), say CascadeVAE follows it; for beta-TCVAE we use
it too on images (see btcvae.py for the paper's MLP, also defined here).

    32x32 (MNIST, Fashion-MNIST, resized from 28x28)       64x64 (dSprites, Chairs, CelebA)
    encoder                                                 encoder
      conv 4x4/2  C -> 32, ReLU       (32 -> 16)             conv 4x4/2  C -> 32, ReLU   (64 -> 32)
                                                             conv 4x4/2 32 -> 32, ReLU   (32 -> 16)
      conv 4x4/2 32 -> 64, ReLU       (16 -> 8)              conv 4x4/2 32 -> 64, ReLU   (16 -> 8)
      conv 4x4/2 64 -> 64, ReLU       (8 -> 4)               conv 4x4/2 64 -> 64, ReLU   (8 -> 4)
      Linear(64*4*4, 256), ReLU                              same
      Linear(256, out_dim)                                   same
    decoder                                                 decoder
      Linear(latent, 256), ReLU                              same
      Linear(256, 64*4*4), ReLU                              same
                                                             convT 4x4/2 64 -> 64, ReLU  (4 -> 8)
      convT 4x4/2 64 -> 32, ReLU      (4 -> 8)               convT 4x4/2 64 -> 32, ReLU  (8 -> 16)
      convT 4x4/2 32 -> 32, ReLU      (8 -> 16)              convT 4x4/2 32 -> 32, ReLU  (16 -> 32)
      convT 4x4/2 32 -> C             (16 -> 32)             convT 4x4/2 32 -> C         (32 -> 64)

The channel counts of the 32x32 encoder follow the JointVAE author's released code
(1 -> 32 -> 64 -> 64), which differs from the table printed in Jeong & Song's
supplement (32 -> 32 -> 64); we follow the released code so that the author's
trained weights (../shared/data/jointvae-official) load into these modules.

DEVIATION (changes no value): the decoder returns *logits*. The papers end the decoder
with a sigmoid and use a Bernoulli likelihood; we fold the sigmoid into the
likelihood (`binary_cross_entropy_with_logits`), which is the same function of the
parameters but numerically stable. Apply `torch.sigmoid` to get pixel means.

The encoder returns one raw vector of size `out_dim`; each method file splits it into
its own parameters (mu, log-variance, category logits) because that split is method
math. Shapes: B batch, C channels, H x W image, L latent size.
"""

import torch
from torch import nn

# (C, H, W) sizes the convolution stacks are built for: four stride-2 steps take 64
# to 4 and three take 32 to 4, and the 64*4*4 linear layer fixes the 4x4 map.
SUPPORTED_SIZES = ((1, 32, 32), (3, 32, 32), (1, 64, 64), (3, 64, 64))

HIDDEN_DIM = 256  # Dupont (2018) App. B: the fully connected layer has 256 units


def check_image_size(image_size):
    """Return image_size as a (C, H, W) tuple, or raise one clear ValueError."""
    size = tuple(int(s) for s in image_size)
    if size not in SUPPORTED_SIZES:
        raise ValueError(
            f"image size {size} (C, H, W) is not supported by the papers' network; "
            f"use one of {', '.join(str(s) for s in SUPPORTED_SIZES)} "
            "(resize your images to 32x32 or 64x64 with 1 or 3 channels)."
        )
    return size


# Output channels of the encoder's 4x4/2 convolutions, by input height. Dupont's App. B
# and his released code: 32 -> 64 -> 64 on 32x32; Jeong & Song supp. B Table 2 prints
# 32 -> 32 -> 64 for their 32x32 net. Both end in 64 channels at 4x4, so the linear
# layers are the same. On 64x64 both papers use 32 -> 32 -> 64 -> 64.
DUPONT_CHANNELS = {32: (32, 64, 64), 64: (32, 32, 64, 64)}
JEONG_SONG_CHANNELS = {32: (32, 32, 64), 64: (32, 32, 64, 64)}


class Net(nn.Module):
    """A network whose forward pass may run under autocast (`--precision bf16|fp16`, see
    set_precision): its output is cast back to float32, so every equation downstream is
    computed in float32 from float32 network outputs."""

    amp_dtype = None  # torch.bfloat16 / torch.float16 under --precision bf16 / fp16; None: float32 throughout

    def __call__(self, x):
        if self.amp_dtype is None:
            return super().__call__(x)
        with torch.autocast(x.device.type, dtype=self.amp_dtype):
            out = super().__call__(x)
        return out.float()


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16's exponent range is small enough that small gradients underflow: it trains with a
# gradient scaler, and only where fp16 is fast (CUDA). bf16 has fp32's range and needs none.
FP16_DEVICE_TYPES = ("cuda",)


def set_precision(model, precision, device):
    """--precision: run every Net of `model` under autocast in that dtype (the networks
    only; losses, estimators and metrics stay float32). One sentence where the device
    cannot run it."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: choose fp32, bf16 or fp16.")
    if precision == "fp16" and device.type not in FP16_DEVICE_TYPES:
        raise ValueError(f"--precision fp16 needs a CUDA GPU (device here: {device.type}); use --precision fp32, "
                         "or bf16 on a processor with bfloat16 units.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                         "use --precision fp32.")
    if precision == "bf16" and device.type == "mps":
        raise ValueError("--precision bf16 is not supported on MPS here; use --precision fp32.")
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        print("note: this CPU has no bfloat16 units, so bf16 is emulated here and slower than fp32 "
              "(measured ~9x on one); use --precision fp32 on it.")
    for module in model.modules():
        if isinstance(module, Net):
            module.amp_dtype = PRECISIONS[precision]
    return model


def grad_scaler(precision, device):
    """fp16's dynamic loss scaling (torch.amp.GradScaler): the loss is multiplied by a scale
    before backward so small gradients survive fp16, the gradients are unscaled before Adam,
    and a step whose gradients overflowed is skipped (the scale then halves). For fp32 and
    bf16 a disabled scaler: scale() returns the loss as it is and step() is optimizer.step()."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _cpu_has_bf16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Encoder(Net):
    """x (B, C, H, W) in [0, 1] -> raw parameter vector (B, out_dim).

    `channels` maps the input height to the convolutions' output channels (default
    DUPONT_CHANNELS); the last must be 64, which the 64*4*4 linear layer reads.
    """

    def __init__(self, image_size, out_dim, hidden_dim=HIDDEN_DIM, channels=None):
        super().__init__()
        self.image_size = check_image_size(image_size)
        c, h, _ = self.image_size
        widths = (channels or DUPONT_CHANNELS)[h]
        layers, c_in = [], c
        # The extra step at 64x64 brings 64x64 inputs to the same 4x4 map.
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.to_hidden = nn.Sequential(nn.Linear(64 * 4 * 4, hidden_dim), nn.ReLU())
        self.head = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):
        h = self.features(x)                   # (B, 64, 4, 4)
        h = h.reshape(h.shape[0], 64 * 4 * 4)  # (B, 1024)
        h = self.to_hidden(h)                  # (B, 256)
        return self.head(h)                    # (B, out_dim)


class Decoder(Net):
    """z (B, latent_dim) -> Bernoulli logits (B, C, H, W)."""

    def __init__(self, image_size, latent_dim, hidden_dim=HIDDEN_DIM):
        super().__init__()
        self.image_size = check_image_size(image_size)
        c, h, _ = self.image_size
        self.to_features = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 64 * 4 * 4), nn.ReLU(),
        )
        layers = []
        if h == 64:
            layers += [nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU()]
        layers += [
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        ]
        self.features = nn.Sequential(*layers)

    def forward(self, z):
        h = self.to_features(z)          # (B, 1024)
        h = h.reshape(h.shape[0], 64, 4, 4)  # (B, 64, 4, 4)
        return self.features(h)          # (B, C, H, W) logits


class MLPEncoder(Net):
    """Chen et al. (2018) supplement H.1, dSprites: 4096-1200-1200-out_dim, ReLU."""

    def __init__(self, image_size, out_dim):
        super().__init__()
        self.image_size = check_image_size(image_size)
        n_pixels = self.image_size[0] * self.image_size[1] * self.image_size[2]
        self.net = nn.Sequential(
            nn.Linear(n_pixels, 1200), nn.ReLU(),
            nn.Linear(1200, 1200), nn.ReLU(),
            nn.Linear(1200, out_dim),
        )

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))  # (B, C*H*W) -> (B, out_dim)


class MLPDecoder(Net):
    """Chen et al. (2018) supplement H.1, dSprites: latent-1200-1200-1200-4096, tanh; logits out."""

    def __init__(self, image_size, latent_dim):
        super().__init__()
        self.image_size = check_image_size(image_size)
        n_pixels = self.image_size[0] * self.image_size[1] * self.image_size[2]
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 1200), nn.Tanh(),
            nn.Linear(1200, 1200), nn.Tanh(),
            nn.Linear(1200, 1200), nn.Tanh(),
            nn.Linear(1200, n_pixels),
        )

    def forward(self, z):
        return self.net(z).reshape(z.shape[0], *self.image_size)  # (B, C, H, W) logits


def place(model, device):
    """model on `device`; on a CPU with channels-last (NHWC) weights, on which oneDNN's
    (transposed) convolutions run ~1.3-1.6x faster (benchmarks/throughput.py,
    benchmarks/evaluation.py). Same values up to float rounding."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def count_parameters(module):
    """Number of trainable parameters (printed by the scripts with the config)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_device(name):
    """torch.device from a --device flag ('auto' picks CUDA, then MPS, then CPU)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} cannot train a model here; use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         "use --device cuda:0 or --device cpu.")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError(f"device {name!r} was asked for but MPS (Apple GPU) is not available; use --device cpu.")
    return device
