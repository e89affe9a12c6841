#!/usr/bin/env python3
"""PyTorch reference implementation of the cuvae model (accuracy check + speed baseline).

Usage:
    /usr/bin/python3 tools/torch/torch_reference.py --data data/mnist [--epochs 30] [--eval-k 100] [--json out.json]
        [--objective elbo|iwae|iwae-dreg|miwae|piwae|ciwae] [--samples K] [--outer-samples M]
        [--ciwae-beta B] [--activation relu|tanh] [--init small-normal|glorot] [--adam-eps 1e-8]

(Use Debian's /usr/bin/python3, which has python3-torch; a pyenv python3 on PATH may lack torch.)

Model (same as cuvae, after the practice in shared/seed/000_dfccf9fb7559ecfd.txt):
  * MNIST raw IDX files (plain or .gz), pixels / 255 as float32.
  * Every training step binarizes its batch afresh: x = (pixel > u), u ~ U(0,1).
  * Encoder MLP 784 -> 200 -> 200 -> 2L (ReLU or, --activation tanh, tanh hidden; linear output; first
    L = mean, last L = log_std).  Decoder MLP L -> 200 -> 200 -> 784 (same hidden activation, output =
    Bernoulli logits).
  * Layers are y = x @ W + b with W of shape [in, out]; --init small-normal (default): every W and b
    0.01 * N(0,1); --init glorot (the IWAE paper's code): W uniform in +-sqrt(6/(in+out)), b = 0, the
    decoder's output bias at logit(mean training pixel intensity clipped to [0.001, 0.999]).
  * K = --samples draws per image: z_k = mean + exp(log_std) * eps_k (eps row b*K + k, as cuvae).
  * log p(x|z) = sum_pixels x*f - softplus(f);  KL = sum_j 0.5*(exp(2 log_std) + mean^2 - 1 - 2 log_std).
  * --objective (maximised, batch mean, Adam(lr, 0.9, 0.999, --adam-eps)):
      elbo       (1/K) sum_k log p(x|z_k) - KL (analytic KL); K = 1 is the seed's ELBO.
      iwae       log (1/K) sum_k w_k, log w_k = log p(x|z_k) + log N(z_k;0,I) - log N(z_k;mean,sigma^2);
                 gradient by autograd.
      iwae-dreg  the same bound; decoder gradient IWAE's (autograd of the bound), encoder gradient DReG
                 (Tucker et al. 2019, as in their code): autograd of sum_k stop(w~_k)^2 log w_k with
                 log q evaluated at stop(mean), stop(sigma), so the encoder's gradient flows through z_k
                 only; w~ = softmax_k log w_k.
      miwae      M = --outer-samples groups of K: (1/M) sum_m log (1/K) sum_k w_mk (Rainforth et al. 2018);
                 eps row (b*M + m)*K + k, as cuvae.
      piwae      decoder gradient: autograd of IWAE over all M*K samples (the bound printed); encoder
                 gradient: autograd of MIWAE(M, K) of the same samples.
      ciwae      beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k, beta = --ciwae-beta.
  * Two or more stochastic layers (--latent-dim 100,50 --hidden 200,200/100,100, the IWAE paper's second
    model): hier_log_w's log w; the elbo is then the mean of log w over the K samples, iwae-dreg evaluates
    every q density at stop(phi); each layer's eps is drawn as the bottom layer's, bottom first.
    The per-epoch value printed is the bound being trained ("elbo", "iwae-K", "miwae-MxK", "piwae-MxK"
    (its value: IWAE over M*K), "ciwae-beta-K"), named as cuvae names it.
"""

import argparse
import ctypes
import datetime
import gzip
import json
import math
import os
import platform
import struct
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as _e:  # pragma: no cover - depends on the interpreter
    sys.exit("error: this python (%s) lacks %s; run it as: /usr/bin/python3 tools/torch/torch_reference.py ..."
             % (sys.executable, _e.name))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA_DIRS = [os.path.join(REPO_ROOT, "data", "mnist"), "/tmp/mnist/package/data"]
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Offset added to --seed for the generator of the fixed test-set binarization / eval noise.
EVAL_SEED_OFFSET = 1_000_003
LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- data

def find_idx(data_dir, base):
    for name in (base, base + ".gz"):
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    return None


def read_idx(path):
    """Read an IDX file (big-endian header), optionally gzip-compressed, into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4:
        raise ValueError("%s: too short for an IDX header" % path)
    zero0, zero1, dtype_code, ndim = struct.unpack(">BBBB", buf[:4])
    if zero0 != 0 or zero1 != 0:
        raise ValueError("%s: bad IDX magic" % path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
    if dtype_code not in dtypes:
        raise ValueError("%s: unknown IDX dtype 0x%02x" % (path, dtype_code))
    hdr = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, buf[4:hdr])
    dt = np.dtype(dtypes[dtype_code])
    n = int(np.prod(dims)) if ndim else 1
    if len(buf) - hdr < n * dt.itemsize:
        raise ValueError("%s: truncated (header says %s)" % (path, dims))
    return np.frombuffer(buf, dtype=dt, count=n, offset=hdr).reshape(dims)


def load_mnist(data_dir):
    dirs = [data_dir] if data_dir else DEFAULT_DATA_DIRS
    for d in dirs:
        paths = {k: find_idx(d, v) for k, v in IDX_NAMES.items()}
        if all(paths.values()):
            break
    else:
        missing = [v for k, v in IDX_NAMES.items() if not find_idx(dirs[-1], v)]
        sys.exit("error: MNIST IDX files not found in %s (missing e.g. %s[.gz])"
                 % (" or ".join(dirs), ", ".join(missing)))
    out = {}
    for k, p in paths.items():
        a = read_idx(p)
        if k.endswith("images"):
            if a.ndim != 3 or a.shape[1:] != (28, 28):
                sys.exit("error: %s: expected N x 28 x 28 images, got %s" % (p, a.shape))
            a = (a.reshape(a.shape[0], 784).astype(np.float32) / np.float32(255.0))
        out[k] = a
    if out["train_images"].shape[0] != out["train_labels"].shape[0] or \
            out["test_images"].shape[0] != out["test_labels"].shape[0]:
        sys.exit("error: image/label counts differ in %s" % d)
    return d, out


# ----------------------------------------------------------------------------- environment

def detect_blas():
    """Which BLAS does this process really use?  Run a matmul, then read /proc/self/maps."""
    a = torch.randn(64, 64)
    (a @ a).sum().item()
    torch.addmm(torch.zeros(64), a, a)
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6:
                    continue
                path = parts[5].strip()
                base = os.path.basename(path).lower()
                if any(s in base for s in ("blas", "mkl_", "libmkl", "blis", "lapack", "atlas")):
                    libs.add(path)
    except OSError as e:
        libs.add("<cannot read /proc/self/maps: %s>" % e)
    libs = sorted(libs)
    joined = " ".join(libs).lower()
    if "openblas" in joined:
        kind = "OpenBLAS"
    elif "mkl" in joined:
        kind = "MKL"
    elif "blis" in joined:
        kind = "BLIS"
    elif "atlas" in joined:
        kind = "ATLAS"
    elif any(os.path.basename(p).startswith("libblas.so") for p in libs):
        kind = "reference BLAS (netlib)"
    else:
        kind = "unknown"
    cfg = torch.__config__.show()
    blas_info = ""
    for tok in cfg.replace(",", " ").split():
        if tok.startswith("BLAS_INFO="):
            blas_info = tok.split("=", 1)[1]
    info = {"kind": kind, "libraries": libs, "torch_blas_info": blas_info}
    # OpenBLAS details (its own thread pool is not controlled by torch.set_num_threads).
    if kind == "OpenBLAS":
        for p in libs:
            if "openblas" not in p.lower() and "libblas.so" not in os.path.basename(p):
                continue
            try:
                lib = ctypes.CDLL(p)
                lib.openblas_get_config.restype = ctypes.c_char_p
                info["openblas_config"] = lib.openblas_get_config().decode(errors="replace").strip()
                info["openblas_threads"] = int(lib.openblas_get_num_threads())
                info["_lib"] = lib
                break
            except (OSError, AttributeError):
                continue
    return info


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- model

def init_mlp(sizes, gen, device, init="small-normal", output_bias=None):
    """Weights W [in, out] and biases b [out], drawn in layer order W then b.

    small-normal: each 0.01 * N(0,1).  glorot: W ~ U(-l, l), l = sqrt(6/(in+out)), b = 0, and the last
    layer's bias = output_bias when given."""
    params = []
    for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:])):
        if init == "glorot":
            limit = math.sqrt(6.0 / (din + dout))
            W = (torch.rand(din, dout, generator=gen) * 2.0 - 1.0) * limit
            b = torch.zeros(dout)
            if output_bias is not None and i == len(sizes) - 2:
                b = output_bias.clone().float()
        else:
            W = torch.randn(din, dout, generator=gen) * 0.01
            b = torch.randn(dout, generator=gen) * 0.01
        params += [W.to(device).requires_grad_(), b.to(device).requires_grad_()]
    return params


def mlp(params, x, activation="relu"):
    n = len(params) // 2
    for i in range(n):
        x = torch.addmm(params[2 * i + 1], x, params[2 * i])  # x @ W + b
        if i < n - 1:
            x = torch.relu(x) if activation == "relu" else torch.tanh(x)
    return x


def elbo_terms(enc, dec, x, eps, activation="relu"):
    """Per-example log p(x|z) and KL for binary x [B,784] and noise eps [B,L] (one sample)."""
    h = mlp(enc, x, activation)
    L = h.shape[1] // 2
    mean, log_std = h[:, :L], h[:, L:]
    z = mean + torch.exp(log_std) * eps
    f = mlp(dec, z, activation)
    logp = (x * f - F.softplus(f)).sum(1)
    kl = 0.5 * (torch.exp(2.0 * log_std) + mean * mean - 1.0 - 2.0 * log_std).sum(1)
    return logp, kl


def train_loss(enc, dec, pixels, u, eps):
    """The seed's one-sample ELBO loss (kept for callers of this module)."""
    x = (pixels > u).to(pixels.dtype)
    logp, kl = elbo_terms(enc, dec, x, eps)
    elbo = (logp - kl).mean()
    return -elbo, elbo.detach()


def bound_name_of(objective, K, M=1, beta=0.5):
    """cuvae's name of the trained bound (vae_model.h's bound_name)."""
    if objective in ("miwae", "piwae"):
        return "%s-%dx%d" % (objective, M, K)
    if objective == "ciwae":
        text = repr(float(beta))  # the shortest text that reads back, as cuvae's format_beta
        return "ciwae-%s-%d" % (text[:-2] if text.endswith(".0") else text, K)
    if objective == "elbo":
        return "elbo" if K == 1 else "elbo-%d" % K
    return "iwae-%d" % K


def objective_forward(enc, dec, pixels, u, eps, objective, K, activation, M=1, beta=0.5):
    """Per-image bound [B] and, for iwae-dreg and piwae, the encoder's surrogate [B] (else None):
    objective_backward gives the decoder the bound's gradient and the encoder the surrogate's.

    eps is [B*M*K, L], sample k of group m of image b in row (b*M + m)*K + k (M = 1 but for miwae, piwae)."""
    S = M * K if objective in ("miwae", "piwae") else K
    x = (pixels > u).to(pixels.dtype)
    h = mlp(enc, x, activation)
    B, L = x.shape[0], h.shape[1] // 2
    mean, log_std = h[:, :L], h[:, L:]
    e = eps.reshape(B, S, L)
    sigma = torch.exp(log_std)
    z = mean.unsqueeze(1) + sigma.unsqueeze(1) * e                                # [B,S,L]
    f = mlp(dec, z.reshape(B * S, L), activation).reshape(B, S, -1)
    logpx = (x.unsqueeze(1) * f - F.softplus(f)).sum(2)                          # [B,S]
    if objective == "elbo":
        kl = 0.5 * (torch.exp(2.0 * log_std) + mean * mean - 1.0 - 2.0 * log_std).sum(1)
        return logpx.mean(1) - kl, None
    # log p(z) - log q(z|x); the log(2 pi) constants cancel.
    log_prior = (-0.5 * z * z).sum(2)
    def log_q(m, ls):
        v = (z - m.unsqueeze(1)) / torch.exp(ls).unsqueeze(1)
        return (-0.5 * v * v - ls.unsqueeze(1)).sum(2)
    logw = logpx + log_prior - log_q(mean, log_std)
    if objective in ("miwae", "piwae"):
        miwae = (torch.logsumexp(logw.reshape(B, M, K), 2) - math.log(K)).mean(1)
        if objective == "miwae":
            return miwae, None
        return torch.logsumexp(logw, 1) - math.log(S), miwae
    bound = torch.logsumexp(logw, 1) - math.log(K)
    if objective == "ciwae":
        return beta * logw.mean(1) + (1.0 - beta) * bound, None
    if objective == "iwae":
        return bound, None
    logw_stop = logpx + log_prior - log_q(mean.detach(), log_std.detach())
    wt = torch.softmax(logw_stop.detach(), 1)
    return bound, (wt * wt * logw_stop).sum(1)


def hier_log_w(encs, decs, x, epss, K, activation, density_encs=None):
    """log w [B,K] of a model with S >= 1 stochastic layers (cuvae's vae_model.h; the IWAE paper's section 5):
    q(h_1|x) q(h_2|h_1) ..., p(h_S) = N(0, I), p(h_{s-1}|h_s) Gaussian, p(x|h_1) Bernoulli;
    log w = log p(x|h_1) + sum_s log p(h_{s-1}|h_s) + log p(h_S) - sum_s log q(h_s|h_{s-1}).
    encs[s], decs[s]: stochastic layer s's (0-based, bottom first) encoder and decoder as flat [W, b, ...]
    lists; x [B, 784] binary; epss[s] [B K, L_s] (sample k of image b in row b K + k); each encoder's output
    and each p(h_{s-1}|h_s) decoder's is [mean | log_std]. density_encs: the encoders that evaluate the q
    densities (DReG's stop(phi): the same values without a gradient to the weights, while the samples'
    paths through encs keep theirs)."""
    B = x.shape[0]
    dens = density_encs if density_encs is not None else encs
    logw = 0.0
    h = []  # h_s [B K, L_s]
    below = x
    for s in range(len(encs)):
        out, d_out = mlp(encs[s], below, activation), mlp(dens[s], below, activation)
        if s == 0:  # one encoder pass per image, K samples
            out, d_out = out.repeat_interleave(K, 0), d_out.repeat_interleave(K, 0)
        L = out.shape[1] // 2
        z = out[:, :L] + torch.exp(out[:, L:]) * epss[s]
        u = (z - d_out[:, :L]) / torch.exp(d_out[:, L:])
        logw = logw - (-0.5 * u * u - d_out[:, L:] - 0.5 * LOG_2PI).sum(1)
        h.append(z)
        below = z
    logw = logw + (-0.5 * h[-1] * h[-1] - 0.5 * LOG_2PI).sum(1)
    for s in range(len(encs) - 1, 0, -1):
        out = mlp(decs[s], h[s], activation)
        L = out.shape[1] // 2
        u = (h[s - 1] - out[:, :L]) / torch.exp(out[:, L:])
        logw = logw + (-0.5 * u * u - out[:, L:] - 0.5 * LOG_2PI).sum(1)
    f = mlp(decs[0], h[0], activation)
    logw = logw + (x.repeat_interleave(K, 0) * f - F.softplus(f)).sum(1)
    return logw.reshape(B, K)


def layered_objective_forward(encs, decs, pixels, u, epss, objective, K, activation, M=1, beta=0.5):
    """objective_forward for two or more stochastic layers (encs, decs: per-layer flat lists; epss: per-layer
    eps, rows as objective_forward's). The elbo is the mean of log w over the samples (p(h_1|h_2) has no
    closed-form KL); iwae-dreg's surrogate evaluates every q density at stop(phi)."""
    S = M * K if objective in ("miwae", "piwae") else K
    x = (pixels > u).to(pixels.dtype)
    B = x.shape[0]
    logw = hier_log_w(encs, decs, x, epss, S, activation)
    if objective == "elbo":
        return logw.mean(1), None
    if objective in ("miwae", "piwae"):
        miwae = (torch.logsumexp(logw.reshape(B, M, K), 2) - math.log(K)).mean(1)
        if objective == "miwae":
            return miwae, None
        return torch.logsumexp(logw, 1) - math.log(S), miwae
    bound = torch.logsumexp(logw, 1) - math.log(K)
    if objective == "ciwae":
        return beta * logw.mean(1) + (1.0 - beta) * bound, None
    if objective == "iwae":
        return bound, None
    stopped = [[p.detach() for p in e] for e in encs]
    logw_stop = hier_log_w(encs, decs, x, epss, K, activation, density_encs=stopped)
    wt = torch.softmax(logw_stop.detach(), 1)
    return bound, (wt * wt * logw_stop).sum(1)


def objective_backward(enc, dec, bound, surrogate):
    """Sets .grad of every parameter to d(-mean bound)/d(param); with a surrogate (DReG's, PIWAE's MIWAE),
    the encoder's to d(-mean surrogate)/d(param)."""
    if surrogate is None:
        (-bound.mean()).backward()
        return
    dec_g = torch.autograd.grad(-bound.mean(), dec, retain_graph=True)
    enc_g = torch.autograd.grad(-surrogate.mean(), enc)
    for p, g in zip(enc + dec, list(enc_g) + list(dec_g)):
        p.grad = g


@torch.no_grad()
def evaluate(enc, dec, test_pixels, k, seed, device, latent, chunk=100, activation="relu"):
    """Test ELBO and importance-sampled NLL (K samples) on a fixed seeded binarization.

    test_elbo = mean over images of [mean_k log p(x|z_k)] - KL  (analytic KL, same estimand as training).
    test_nll  = -mean over images of log (1/K) sum_k exp(log p(x|z_k) + log N(z_k;0,I) - log q(z_k|x)).
    The binarization and the eps are drawn on the CPU from a generator seeded with seed+EVAL_SEED_OFFSET,
    so they do not depend on the device.
    """
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    n = test_pixels.shape[0]
    xb = (test_pixels > torch.rand(test_pixels.shape, generator=gen)).float()
    elbo_sum = 0.0
    nll_sum = 0.0
    for s in range(0, n, chunk):
        x = xb[s:s + chunk].to(device)
        B = x.shape[0]
        eps = torch.randn(k, B, latent, generator=gen).to(device)
        h = mlp(enc, x, activation)
        mean, log_std = h[:, :latent], h[:, latent:]
        z = mean.unsqueeze(0) + torch.exp(log_std).unsqueeze(0) * eps          # [K,B,L]
        f = mlp(dec, z.reshape(k * B, latent), activation).reshape(k, B, -1)  # [K,B,784]
        logp = (x.unsqueeze(0) * f - F.softplus(f)).sum(2)                   # [K,B]
        log_prior = (-0.5 * z * z - 0.5 * LOG_2PI).sum(2)
        log_q = (-0.5 * eps * eps - log_std.unsqueeze(0) - 0.5 * LOG_2PI).sum(2)
        logw = logp + log_prior - log_q
        ll = torch.logsumexp(logw.double(), 0) - math.log(k)               # [B]
        kl = 0.5 * (torch.exp(2.0 * log_std) + mean * mean - 1.0 - 2.0 * log_std).sum(1)
        elbo_sum += (logp.double().mean(0) - kl.double()).sum().item()
        nll_sum += (-ll).sum().item()
    return elbo_sum / n, nll_sum / n


@torch.no_grad()
def evaluate_layered(encs, decs, test_pixels, k, seed, device, latents, activation="relu"):
    """evaluate() for two or more stochastic layers: test_elbo = mean over images of the mean of log w over
    the k samples (no closed-form KL), test_nll = -mean of log (1/k) sum_k w_k; the binarization and the
    eps are drawn as evaluate()'s."""
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    n = test_pixels.shape[0]
    xb = (test_pixels > torch.rand(test_pixels.shape, generator=gen)).float()
    chunk = max(1, min(100, 20000 // k))  # at most 20000 decoder rows at a time
    elbo_sum = nll_sum = 0.0
    for s in range(0, n, chunk):
        x = xb[s:s + chunk].to(device)
        epss = [torch.randn(x.shape[0] * k, Ls, generator=gen).to(device) for Ls in latents]
        logw = hier_log_w(encs, decs, x, epss, k, activation).double()
        elbo_sum += logw.mean(1).sum().item()
        nll_sum += (-(torch.logsumexp(logw, 1) - math.log(k))).sum().item()
    return elbo_sum / n, nll_sum / n


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch reference VAE for MNIST (same model as cuvae). Run with /usr/bin/python3.",
        epilog="Batches are taken in dataset order (no shuffle) unless --shuffle. If 60000 is not a "
               "multiple of --batch-size, the last partial batch of each epoch is DROPPED. The per-epoch "
               "ELBO is the mean over the epoch's steps of the batch-mean ELBO, each computed in the "
               "step's forward pass (before that step's update).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None,
                   help="directory with the MNIST IDX files (plain or .gz); default: first of %s that has them"
                   % ", ".join(DEFAULT_DATA_DIRS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--latent-dim", default="50",
                   help="latent units; a comma list for several stochastic layers, bottom first (100,50)")
    p.add_argument("--hidden", default="200,200",
                   help="comma-separated hidden layer widths (encoder; decoder mirrors); one list per stochastic "
                        "layer, '/' between them (200,200/100,100)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adam-eps", type=float, default=1e-8, help="Adam's epsilon (the IWAE paper: 1e-4)")
    p.add_argument("--objective", choices=["elbo", "iwae", "iwae-dreg", "miwae", "piwae", "ciwae"], default="elbo",
                   help="the trained bound (see the module docstring)")
    p.add_argument("--samples", type=int, default=1, help="K: samples of z per image (per group: miwae, piwae)")
    p.add_argument("--outer-samples", type=int, default=1, help="M: groups of K samples (miwae, piwae)")
    p.add_argument("--ciwae-beta", type=float, default=0.5, help="ciwae's beta in [0, 1]")
    p.add_argument("--activation", choices=["relu", "tanh"], default="relu", help="hidden layers' nonlinearity")
    p.add_argument("--init", choices=["small-normal", "glorot"], default="small-normal",
                   help="parameter initialization (see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action="store_true", help="reshuffle the training set every epoch")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many training steps in total (0 = no limit)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss (needs PyTorch >= 2.0)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads and OpenBLAS threads (0 = all CPUs in the affinity mask)")
    p.add_argument("--eval-k", type=int, default=0,
                   help="after training, test ELBO and importance-sampled NLL with K samples (0 = skip)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images only (0 = all)")
    p.add_argument("--json", default=None, help="write a JSON summary to this file")
    a = p.parse_args(argv)
    try:
        a.hidden_layers = [[int(s) for s in layer.split(",")] for layer in a.hidden.split("/")]
        a.latents = [int(s) for s in a.latent_dim.split(",")]
    except ValueError:
        p.error("--hidden must be comma-separated integers, e.g. 200,200 (or 200,200/100,100), "
                "--latent-dim one integer per stochastic layer (50, or 100,50)")
    if min(min(h) for h in a.hidden_layers) <= 0 or min(a.latents) <= 0:
        p.error("--hidden and --latent-dim need positive widths")
    if len(a.hidden_layers) != len(a.latents):
        p.error("--hidden has %d layer lists for the %d stochastic layers of --latent-dim"
                % (len(a.hidden_layers), len(a.latents)))
    a.hidden_sizes, a.latent_dim = a.hidden_layers[0], a.latents[0]  # the bottom layer's
    for name in ("epochs", "batch_size", "samples"):
        if getattr(a, name) <= 0:
            p.error("--%s must be positive" % name.replace("_", "-"))
    if a.adam_eps <= 0:
        p.error("--adam-eps must be positive")
    if a.max_steps < 0 or a.eval_k < 0 or a.eval_limit < 0 or a.threads < 0:
        p.error("--max-steps, --eval-k, --eval-limit and --threads must be >= 0")
    return a


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False (torch %s, built with CUDA: %s)"
                 % (torch.__version__, torch.version.cuda))
    if args.compile and not hasattr(torch, "compile"):
        sys.exit("error: --compile needs torch.compile (PyTorch >= 2.0); this is torch %s" % torch.__version__)

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    blas = detect_blas()
    if "_lib" in blas:
        try:
            blas["_lib"].openblas_set_num_threads(threads)
            blas["openblas_threads"] = int(blas["_lib"].openblas_get_num_threads())
        except AttributeError:
            pass
    blas.pop("_lib", None)
    device = torch.device(args.device)

    print("torch %s  device %s%s  threads %d (interop %d)" % (
        torch.__version__, device,
        (" (%s)" % torch.cuda.get_device_name(0)) if device.type == "cuda" else "",
        torch.get_num_threads(), torch.get_num_interop_threads()))
    print("BLAS: %s  [torch BLAS_INFO=%s]  loaded: %s" % (
        blas["kind"], blas["torch_blas_info"] or "?", ", ".join(blas["libraries"]) or "none"))
    if "openblas_config" in blas:
        print("OpenBLAS: %s  threads %s" % (blas["openblas_config"], blas.get("openblas_threads")))
    if blas["kind"] != "OpenBLAS":
        bar = "!" * 78
        print("%s\nWARNING: torch is NOT using OpenBLAS (detected: %s). The Debian reference BLAS is very\n"
              "slow; CPU timings from this run are not a fair baseline. Fix with:\n"
              "  sudo update-alternatives --config libblas.so.3-x86_64-linux-gnu   (choose openblas)\n%s"
              % (bar, blas["kind"], bar), file=sys.stderr, flush=True)
    sys.stdout.flush()

    data_dir, mnist = load_mnist(args.data)
    train_np, test_np = mnist["train_images"], mnist["test_images"]
    N = train_np.shape[0]
    B = args.batch_size
    steps_per_epoch = N // B
    if steps_per_epoch == 0:
        sys.exit("error: --batch-size %d exceeds the training set size %d" % (B, N))
    dropped = N - steps_per_epoch * B
    L = args.latent_dim
    K = args.samples
    M = args.outer_samples
    if K < 1 or M < 1:
        sys.exit("error: --samples and --outer-samples must be at least 1")
    if M != 1 and args.objective not in ("miwae", "piwae"):
        sys.exit("error: --outer-samples %d: objective %s has no groups of samples (only miwae and piwae do)"
                 % (M, args.objective))
    if not 0.0 <= args.ciwae_beta <= 1.0:
        sys.exit("error: --ciwae-beta must be in [0, 1], got %g" % args.ciwae_beta)
    S = M * K  # samples per image
    bound_name = bound_name_of(args.objective, K, M, args.ciwae_beta)
    print("data %s: train %d, test %d; batch %d, %d steps/epoch%s; latent %s, hidden %s, lr %g, seed %d%s"
          % (data_dir, N, test_np.shape[0], B, steps_per_epoch,
             (" (last %d images dropped)" % dropped) if dropped else "",
             ",".join(map(str, args.latents)),
             "/".join(",".join(map(str, h)) for h in args.hidden_layers), args.lr, args.seed, ", shuffle" if args.shuffle else ""), flush=True)
    print("objective %s, K %d (bound %s); activation %s; init %s; Adam eps %g"
          % (args.objective, K, bound_name, args.activation, args.init, args.adam_eps), flush=True)

    init_gen = torch.Generator().manual_seed(args.seed)
    output_bias = None
    if args.init == "glorot":
        m = torch.from_numpy(train_np.astype(np.float64).mean(0)).clamp(0.001, 0.999)
        output_bias = torch.log(m / (1.0 - m))
    # Stochastic layer s: encoder in_s -> hidden_s -> 2 L_s (in_0 = 784, in_s = L_{s-1}), decoder
    # L_s -> reversed hidden_s -> 784 Bernoulli logits (s = 0) or 2 L_{s-1} (mean | log_std of p(h_{s-1}|h_s)).
    encs, decs = [], []
    for s, (Ls, hid) in enumerate(zip(args.latents, args.hidden_layers)):
        encs.append(init_mlp([784 if s == 0 else args.latents[s - 1]] + hid + [2 * Ls], init_gen, device,
                             args.init))
        decs.append(init_mlp([Ls] + hid[::-1] + [784 if s == 0 else 2 * args.latents[s - 1]], init_gen, device,
                             args.init, output_bias if s == 0 else None))
    layered = len(encs) > 1
    enc, dec = [p for e in encs for p in e], [p for d in decs for p in d]
    opt = torch.optim.Adam(enc + dec, lr=args.lr, betas=(0.9, 0.999), eps=args.adam_eps)
    # Training noise (binarization, eps, shuffling) comes from a device generator.
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    train = torch.from_numpy(np.ascontiguousarray(train_np)).to(device)

    def forward_fn(enc, dec, pix, u, eps):
        if layered:
            return layered_objective_forward(encs, decs, pix, u, eps, args.objective, K, args.activation, M,
                                             args.ciwae_beta)
        return objective_forward(enc, dec, pix, u, eps, args.objective, K, args.activation, M, args.ciwae_beta)
    loss_fn = forward_fn
    if args.compile:
        try:
            loss_fn = torch.compile(forward_fn)
        except Exception as e:  # pragma: no cover
            sys.exit("error: torch.compile failed: %s" % e)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    history = []
    step = 0
    stop = False
    for epoch in range(1, args.epochs + 1):
        sync()
        t0 = time.perf_counter()
        order = torch.randperm(N, generator=noise_gen, device=device) if args.shuffle else None
        elbo_acc = torch.zeros((), dtype=torch.float64, device=device)
        nsteps = 0
        for i in range(steps_per_epoch):
            if args.max_steps and step >= args.max_steps:
                stop = True
                break
            pix = train[order[i * B:(i + 1) * B]] if order is not None else train[i * B:(i + 1) * B]
            u = torch.rand(pix.shape, generator=noise_gen, device=device)
            if layered:
                eps = [torch.randn(B * S, Ls, generator=noise_gen, device=device) for Ls in args.latents]
            else:
                eps = torch.randn(B * S, L, generator=noise_gen, device=device)  # S = 1: the seed's draw
            opt.zero_grad(set_to_none=True)
            bound, surrogate = loss_fn(enc, dec, pix, u, eps)
            objective_backward(enc, dec, bound, surrogate)
            opt.step()
            elbo_acc += bound.detach().mean()
            nsteps += 1
            step += 1
        if nsteps == 0:
            break
        mean_elbo = elbo_acc.item() / nsteps
        sync()
        secs = time.perf_counter() - t0
        sps = nsteps * B / secs
        if not math.isfinite(mean_elbo):
            print("epoch %3d  %s is %s -- diverged" % (epoch, bound_name, mean_elbo), flush=True)
        print("epoch %3d  %s %10.4f  %8.2f s  %10.1f samples/s  (%d steps)"
              % (epoch, bound_name, mean_elbo, secs, sps, nsteps), flush=True)
        row = {"epoch": epoch, "bound": mean_elbo, "seconds": secs, "samples_per_s": sps, "steps": nsteps}
        if args.objective == "elbo":
            row["elbo"] = mean_elbo  # the older name, for files read by older scripts
        history.append(row)
        if stop:
            break
    train_secs = sum(h["seconds"] for h in history)
    tot_samples = sum(h["steps"] for h in history) * B
    if history:
        print("training: %d steps, %.2f s, %.1f samples/s overall"
              % (step, train_secs, tot_samples / train_secs), flush=True)

    test_elbo = test_nll = None
    eval_secs = None
    if args.eval_k > 0:
        test = torch.from_numpy(np.ascontiguousarray(test_np))
        if args.eval_limit:
            test = test[:args.eval_limit]
        sync()
        t0 = time.perf_counter()
        if layered:
            test_elbo, test_nll = evaluate_layered(encs, decs, test, args.eval_k, args.seed, device, args.latents,
                                                   activation=args.activation)
        else:
            test_elbo, test_nll = evaluate(enc, dec, test, args.eval_k, args.seed, device, L,
                                           activation=args.activation)
        sync()
        eval_secs = time.perf_counter() - t0
        print("test (%d images, K=%d): elbo %.4f  NLL %.4f nats/example  (%.1f s)"
              % (test.shape[0], args.eval_k, test_elbo, test_nll, eval_secs), flush=True)

    if args.json:
        summary = {
            "tool": "tools/torch/torch_reference.py",
            "config": {"data": data_dir, "epochs": args.epochs, "batch_size": B, "latent_dim": L,
                       "hidden": args.hidden_sizes, "latents": args.latents, "hidden_layers": args.hidden_layers, "lr": args.lr, "adam_betas": [0.9, 0.999],
                       "adam_eps": args.adam_eps, "objective": args.objective, "samples": K,
                       "outer_samples": M, "ciwae_beta": args.ciwae_beta if args.objective == "ciwae" else None,
                       "bound": bound_name, "activation": args.activation, "init": args.init,
                       "init_std": 0.01 if args.init == "small-normal" else None,
                       "seed": args.seed, "shuffle": args.shuffle,
                       "max_steps": args.max_steps, "device": str(device), "compile": args.compile,
                       "threads": torch.get_num_threads(), "eval_k": args.eval_k,
                       "eval_limit": args.eval_limit, "steps_per_epoch": steps_per_epoch,
                       "dropped_per_epoch": dropped},
            "epochs": history,
            "train_seconds": train_secs,
            "train_samples_per_s": (tot_samples / train_secs) if history else None,
            "test_elbo": test_elbo,
            "test_nll": test_nll,
            "eval_images": (min(args.eval_limit or test_np.shape[0], test_np.shape[0]) if args.eval_k else 0),
            "eval_seconds": eval_secs,
            "blas": blas,
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "python": sys.version.split()[0],
            "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "machine": {"node": platform.node(), "cpu_model": cpu_model(),
                        "cpus": os.cpu_count(), "platform": platform.platform()},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": time.time() - t_start,
        }
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
        print("wrote %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
