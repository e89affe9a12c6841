#!/usr/bin/env python3
"""cuvae's analytic gradients of elbo, iwae, iwae-dreg, miwae, piwae and ciwae against PyTorch autograd in float64,
for one stochastic layer and for two (hier_log_w: the IWAE paper's second architecture).

Usage:
    /usr/bin/python3 tools/torch/check_gradients_torch.py --file grads.safetensors [--dump build/cuvae_dump_gradients]
                     [--mnist data/mnist] [--report out.txt]

With --dump EXE it first runs `EXE FILE --mnist DIR` (tests/torch/dump_gradients.cpp), which writes, for a
small network (784-32-16-4) and the real one (784-200-200-50), each with ReLU and with tanh: the
parameters, a fixed batch of binarized MNIST images x, eps for S = 1, 3, 5, 6 samples per image, and
cuvae's per-image bound and gradient of loss = -(1/B) sum_b bound_b for each objective and S (the K
column below; miwae and piwae split S into M = 2 groups of K = S/2 where S is even, else M = S groups
of one; ciwae's beta is 0.3). This script loads the same tensors,
computes the loss in float64 with torch autograd and compares every parameter tensor's gradient.

The reference (the model of cuvae, include/cuvae/model/vae_model.h):
  h = encoder(x) = [mean | log_std], z_bk = mean_b + exp(log_std_b) eps_bk (eps row b K + k),
  f = decoder(z) Bernoulli logits, log p(x|z) = sum x f - softplus(f), layers y = x @ W + b.
  elbo:      (1/K) sum_k log p(x|z_k) - KL(q||p) (analytic KL)
  iwae:      log (1/K) sum_k w_k, log w_k = log p(x|z_k) + log N(z_k; 0, I) - log N(z_k; mean, sigma^2)
  iwae-dreg: decoder gradient: IWAE's; encoder gradient: autograd of the surrogate
             sum_k stop(w~_k)^2 log w_k with log q evaluated at stop(mean), stop(sigma) (Tucker et al. 2019,
             as in their code), w~ = softmax_k log w_k.
  miwae:     (1/M) sum_m log (1/K) sum_k w_mk (Rainforth et al. 2018), sample k of group m in row (b M + m) K + k
  piwae:     decoder gradient: autograd of IWAE over all M K samples (the bound compared); encoder
             gradient: autograd of MIWAE(M, K) of the same samples
  ciwae:     beta (1/K) sum_k log w_k + (1 - beta) log (1/K) sum_k w_k

Error measure, per tensor: max_i |g_i - r_i| / max_i |r_i| (the worst element's error relative to the
tensor's scale; an element-wise relative error would be dominated by entries that are sums cancelling to
~0). Tolerance TOL = 2e-4 (see TOLERANCE_NOTE). Exit 0 when every tensor is within TOL, 1 when any is
not, 77 (ctest's skip) when this Python has no torch.
"""

import argparse
import datetime
import json
import math
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as _e:  # pragma: no cover - depends on the interpreter
    print("SKIPPED: %s (%s) lacks %s; install Debian's python3-torch (apt-get install python3-torch) "
          "or run with /usr/bin/python3" % (sys.executable, sys.version.split()[0], _e.name))
    sys.exit(77)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_2PI = math.log(2.0 * math.pi)
TOL = 2e-4
BOUND_TOL = 1e-5  # relative, on each image's bound
CIWAE_BETA = 0.3  # tests/torch/dump_gradients.cpp's


def outer_samples_for(S):
    """miwae's and piwae's M for S samples per image (dump_gradients.cpp's rule)."""
    return 2 if S % 2 == 0 else S
TOLERANCE_NOTE = """\
Tolerances. cuvae computes in float32 (unit roundoff 6e-8), the reference in float64 from the same
float32 params, x and eps, so the difference is cuvae's rounding (and its BLAS's summation order).
Its largest source is each sample's log w_k = log p(x|z_k) + ...: log p(x|z_k) is a sum over 784
pixels of -100..-500 nats in all, whose rounding moves the normalized weights w~ = softmax(log w)
by that much relative; the IWAE gradients are w~-weighted sums of per-sample terms, so they carry
it (the ELBO's do not). The CPU backend sums it in double (summed in float it had ~3e-4 nats of
rounding where the loop was not vectorized, 2x TOL in the sanitizer build on a Zen 3). Measured on
this check: ELBO ~1e-7..1e-6 of each tensor's largest entry, IWAE/DReG with K > 1 ~1e-6..2e-5.
TOL = 2e-4 is 10x the worst measured, to leave room for other BLAS kernels' summation orders.
A wrong term is off by far more: the 'would it notice' section computes wrong variants (IWAE's
encoder gradient instead of DReG's, w~ instead of w~^2, no direct d/dlog_std term, sampled instead
of analytic KL) in float64 and reports their distance from the reference in the same units.
Bounds: |bound - ref| <= 1e-5 |ref| per image (measured ~1e-7)."""


# ----------------------------------------------------------------------------- safetensors

def read_safetensors(path):
    """Plain-Python reader: 8-byte little-endian header length, JSON header, raw data."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("%s: shorter than the 8-byte header length" % path)
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = memoryview(buf)[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, e in header.items():
        if e["dtype"] != "F32":
            raise ValueError("%s: tensor %s has dtype %s (expected F32)" % (path, name, e["dtype"]))
        b, end = e["data_offsets"]
        shape = tuple(e["shape"])
        a = np.frombuffer(data[b:end], dtype="<f4")
        if a.size != int(np.prod(shape)):
            raise ValueError("%s: tensor %s: %d values for shape %s" % (path, name, a.size, shape))
        tensors[name] = a.reshape(shape)
    return tensors, meta


# ----------------------------------------------------------------------------- the reference model

def mlp(layers, x, act):
    n = len(layers)
    for i, (W, b) in enumerate(layers):
        x = torch.addmm(b, x, W)
        if i < n - 1:
            x = torch.relu(x) if act == "relu" else torch.tanh(x)
    return x


def pieces(enc, dec, x, eps, K, act, dec_for_z=None):
    """Forward: mean, log_std [B,L], z [B,K,L], log p(x|z) [B,K], log N(z;0,I) [B,K]."""
    h = mlp(enc, x, act)
    L = h.shape[1] // 2
    B = x.shape[0]
    mean, log_std = h[:, :L], h[:, L:]
    e = eps.reshape(B, K, L)
    z = mean.unsqueeze(1) + torch.exp(log_std).unsqueeze(1) * e
    f = mlp(dec_for_z if dec_for_z is not None else dec, z.reshape(B * K, L), act).reshape(B, K, -1)
    logpx = (x.unsqueeze(1) * f - F.softplus(f)).sum(2)
    log_prior = (-0.5 * z * z - 0.5 * LOG_2PI).sum(2)
    return mean, log_std, z, logpx, log_prior


def log_normal(z, mean, log_std):
    """log N(z; mean, exp(2 log_std)) summed over the latent dimension; mean, log_std [B,L], z [B,K,L]."""
    u = (z - mean.unsqueeze(1)) / torch.exp(log_std).unsqueeze(1)
    return (-0.5 * u * u - log_std.unsqueeze(1) - 0.5 * LOG_2PI).sum(2)


def bound_and_grads(objective, enc, dec, x, eps, K, act, variant=None):
    """The per-image bound and d(-(1/B) sum_b bound_b)/d(params) (list: encoder's then decoder's).

    variant (the 'would it notice' check) replaces the encoder's gradient with a wrong one:
      iwae-dreg: 'iwae' (IWAE's encoder gradient), 'stl' (w~ instead of w~^2: sticking the landing),
                 'sigma' (d(-log q)/dz = eps sigma instead of eps / sigma)
      iwae:      'no-direct' (log q at stopped mean/sigma: drops the direct d/dlog_std term)
      elbo:      'sampled-kl' (log p(z) - log q(z|x) sampled instead of the analytic KL)
      miwae:     'iwae' (IWAE over all M K samples instead of the mean of M group bounds)
      piwae:     'miwae-decoder' (the decoder on MIWAE too), 'iwae-encoder' (the encoder on IWAE too)
      ciwae:     'swapped' (beta on the IWAE term, 1 - beta on the ELBO term)
    """
    params = [p for layer in enc + dec for p in layer]
    enc_p = [p for layer in enc for p in layer]
    dec_p = [p for layer in dec for p in layer]
    B = x.shape[0]
    mean, log_std, z, logpx, log_prior = pieces(enc, dec, x, eps, K, act)
    if objective == "elbo":
        if variant == "sampled-kl":
            kl = -(log_prior - log_normal(z, mean, log_std)).mean(1)
        else:
            kl = 0.5 * (torch.exp(2.0 * log_std) + mean * mean - 1.0 - 2.0 * log_std).sum(1)
        bound = logpx.mean(1) - kl
        grads = torch.autograd.grad(-bound.sum() / B, params)
        return bound.detach(), list(grads)
    logw = logpx + log_prior - log_normal(z, mean, log_std)
    bound = torch.logsumexp(logw, 1) - math.log(K)
    if objective in ("miwae", "piwae", "ciwae"):
        M = outer_samples_for(K) if objective != "ciwae" else 1
        miwae = (torch.logsumexp(logw.reshape(B, M, K // M), 2) - math.log(K // M)).mean(1)
        if objective == "ciwae":
            beta = 1.0 - CIWAE_BETA if variant == "swapped" else CIWAE_BETA
            ciwae = beta * logw.mean(1) + (1.0 - beta) * bound
            return ciwae.detach(), list(torch.autograd.grad(-ciwae.sum() / B, params))
        if objective == "miwae":
            target = bound if variant == "iwae" else miwae
            return miwae.detach(), list(torch.autograd.grad(-target.sum() / B, params))
        dec_target = miwae if variant == "miwae-decoder" else bound
        enc_target = bound if variant == "iwae-encoder" else miwae
        dec_g = torch.autograd.grad(-dec_target.sum() / B, dec_p, retain_graph=True)
        enc_g = torch.autograd.grad(-enc_target.sum() / B, enc_p)
        return bound.detach(), list(enc_g) + list(dec_g)
    if objective == "iwae" and variant is None:
        return bound.detach(), list(torch.autograd.grad(-bound.sum() / B, params))
    # Decoder: IWAE's gradient.
    dec_g = torch.autograd.grad(-bound.sum() / B, dec_p, retain_graph=True)
    if (objective == "iwae" and variant == "no-direct") or objective == "iwae-dreg":
        # log q at stop(mean), stop(log_std): the gradient flows through z only.
        logw_stop = logpx + log_prior - log_normal(z, mean.detach(), log_std.detach())
        wt = torch.softmax(logw_stop.detach(), 1)
        if variant == "sigma":
            # d(-log q)/dz as eps * sigma instead of eps / sigma (weights from the right log w).
            e = eps.reshape(B, K, -1)
            sd = torch.exp(log_std.detach()).unsqueeze(1)
            logw_stop = logpx + log_prior + (z * (e * sd)).sum(2)
        if objective == "iwae" and variant == "no-direct":
            surrogate = (wt * logw_stop).sum(1)
        elif variant == "stl":
            surrogate = (wt * logw_stop).sum(1)
        elif variant == "iwae":
            surrogate = bound
        else:
            surrogate = (wt * wt * logw_stop).sum(1)
        enc_g = torch.autograd.grad(-surrogate.sum() / B, enc_p)
    else:
        raise ValueError("unknown variant %s for %s" % (variant, objective))
    return bound.detach(), list(enc_g) + list(dec_g)


def hier_log_w(encs, decs, x, epss, K, act, density_encs=None):
    """torch_reference.hier_log_w (the one definition of the layered model) on lists of (W, b) pairs."""
    flat = lambda layers: [[p for pair in e for p in pair] for e in layers]
    return torch_reference.hier_log_w(flat(encs), flat(decs), x, epss, K, act,
                                      None if density_encs is None else flat(density_encs))


def hier_bound_and_grads(objective, encs, decs, x, epss, K, act, variant=None):
    """bound_and_grads for S >= 2 stochastic layers; the gradient list is in cuvae's layout order
    (encoder 1, decoder 1, encoder 2, decoder 2, ...). The elbo is the mean of log w over the K samples
    (no closed-form KL for p(h_1|h_2)). iwae-dreg: every encoder on DReG's surrogate sum_k stop(w~_k)^2 log w_k
    with each q density evaluated at stop(phi) (Tucker et al. 2019, section 6's hierarchical case); variant
    'iwae' gives the encoders IWAE's gradient instead (the 'would it notice' check)."""
    B = x.shape[0]
    enc_p = [[p for layer in e for p in layer] for e in encs]
    dec_p = [[p for layer in d for p in layer] for d in decs]
    all_enc = [p for e in enc_p for p in e]
    all_dec = [p for d in dec_p for p in d]
    logw = hier_log_w(encs, decs, x, epss, K, act)
    iwae = torch.logsumexp(logw, 1) - math.log(K)
    M = outer_samples_for(K) if objective in ("miwae", "piwae") else 1
    miwae = (torch.logsumexp(logw.reshape(B, M, K // M), 2) - math.log(K // M)).mean(1)
    if objective == "elbo":
        bound, enc_t, dec_t = logw.mean(1), logw.mean(1), logw.mean(1)
    elif objective == "iwae":
        bound, enc_t, dec_t = iwae, iwae, iwae
    elif objective == "miwae":
        bound, enc_t, dec_t = miwae, miwae, miwae
    elif objective == "piwae":
        bound, enc_t, dec_t = iwae, miwae, iwae
    elif objective == "ciwae":
        bound = CIWAE_BETA * logw.mean(1) + (1.0 - CIWAE_BETA) * iwae
        enc_t, dec_t = bound, bound
    elif objective == "iwae-dreg":
        bound, enc_t, dec_t = iwae, None, iwae
    else:
        raise ValueError(objective)
    dec_g = torch.autograd.grad(-dec_t.sum() / B, all_dec, retain_graph=True)
    if objective == "iwae-dreg" and variant != "iwae":
        stopped = [[(W.detach(), b.detach()) for W, b in e] for e in encs]
        logw_stop = hier_log_w(encs, decs, x, epss, K, act, density_encs=stopped)
        wt = torch.softmax(logw_stop.detach(), 1)
        enc_t = (wt * wt * logw_stop).sum(1)
    elif objective == "iwae-dreg":
        enc_t = iwae
    enc_g = torch.autograd.grad(-enc_t.sum() / B, all_enc)
    # cuvae's order: layer by layer, encoder then decoder.
    grads, ei, di = [], 0, 0
    for e, d in zip(enc_p, dec_p):
        grads += list(enc_g[ei:ei + len(e)]) + list(dec_g[di:di + len(d)])
        ei += len(e)
        di += len(d)
    return bound.detach(), grads


WRONG_VARIANTS = {"elbo": [("sampled-kl", "sampled KL instead of analytic")],
                  "iwae": [("no-direct", "no direct d(-log q)/dlog_std term")],
                  "iwae-dreg": [("iwae", "IWAE encoder gradient instead of DReG"),
                                ("stl", "w~ instead of w~^2 (STL)"),
                                ("sigma", "d(-log q)/dz as eps*sigma, not eps/sigma")],
                  "miwae": [("iwae", "IWAE over all M K instead of MIWAE")],
                  "piwae": [("miwae-decoder", "decoder on MIWAE instead of IWAE"),
                            ("iwae-encoder", "encoder on IWAE instead of MIWAE")],
                  "ciwae": [("swapped", "beta and 1 - beta swapped")]}


def tensor_error(g, r):
    scale = float(r.abs().max())
    diff = float((g - r).abs().max())
    return diff / scale if scale > 0 else diff


import torch_reference  # noqa: E402 (beside this script in tools/torch/)
from torch_reference import cpu_model  # noqa: E402


def check_layered_case(c, tensors, samples, objectives, out, failures, worst_summary, variant_rows, variants):
    """One case with two or more stochastic layers: every objective and K against hier_bound_and_grads."""
    arch, act = c["arch"], c["activation"]
    t64 = lambda n: torch.from_numpy(tensors[n].astype(np.float64))
    x = t64(arch + ".x")
    S = len(c["latents"])
    enc_names = [["encoder%s.%d" % ("" if s == 0 else s + 1, i) for i in range(len(c["hidden_layers"][s]) + 1)]
                 for s in range(S)]
    dec_names = [["decoder%s.%d" % ("" if s == 0 else s + 1, i) for i in range(len(c["hidden_layers"][s]) + 1)]
                 for s in range(S)]
    tensor_names = [n + t for s in range(S) for n in enc_names[s] + dec_names[s] for t in (".W", ".b")]

    def fresh():
        load = lambda names: [(t64("%s.param.%s.W" % (arch, n)).requires_grad_(),
                               t64("%s.param.%s.b" % (arch, n)).requires_grad_()) for n in names]
        return [load(n) for n in enc_names], [load(n) for n in dec_names]

    out("== %s: %d stochastic layers, latents %s, hidden %s, %s; %d tensors (encoder then decoder per layer)" % (
        arch, S, ",".join(map(str, c["latents"])), "/".join(",".join(map(str, h)) for h in c["hidden_layers"]),
        act, len(tensor_names)))
    out("%-10s %2s  %-9s %-9s  %s" % ("objective", "K", "bound", "worst", "worst tensor"))
    for K in samples:
        epss = [t64("%s.K%d.eps%s" % (arch, K, "" if s == 0 else ".%d" % s)) for s in range(S)]
        for obj in objectives:
            encs, decs = fresh()
            bound, ref = hier_bound_and_grads(obj, encs, decs, x, epss, K, act)
            key = "%s.%s.K%d." % (arch, obj, K)
            cb = torch.from_numpy(tensors[key + "bound"].astype(np.float64))
            berr = float(((cb - bound).abs() / bound.abs().clamp(min=1.0)).max()) / BOUND_TOL
            fracs = []
            for tn, r in zip(tensor_names, ref):
                g = torch.from_numpy(tensors[key + "grad." + tn].astype(np.float64))
                fr = tensor_error(g, r) / TOL
                fracs.append(fr)
                if fr > 1.0:
                    failures.append("%s %s K=%d %s: %.3g of TOL" % (arch, obj, K, tn, fr))
            if berr > 1.0:
                failures.append("%s %s K=%d bound: %.3g of BOUND_TOL" % (arch, obj, K, berr))
            worst = max(fracs)
            worst_summary.append((arch, obj, K, worst, tensor_names[fracs.index(worst)], berr))
            out("%-10s %2d  %9.2e %9.2e  %s" % (obj, K, berr, worst, tensor_names[fracs.index(worst)]))
            # torch_reference.py's training step (layered_objective_forward/objective_backward) on the same
            # tensors: the reference trained in the quality comparisons computes these gradients too.
            e3, d3 = fresh()
            flat = lambda layers: [[p for pair in e for p in pair] for e in layers]
            M = outer_samples_for(K) if obj in ("miwae", "piwae") else 1
            b3, sur = torch_reference.layered_objective_forward(flat(e3), flat(d3), x, torch.full_like(x, 0.5), epss,
                                                                obj, K // M, act, M, CIWAE_BETA)
            ep = [p for e in flat(e3) for p in e]
            dp = [p for d in flat(d3) for p in d]
            torch_reference.objective_backward(ep, dp, b3, sur)
            by_name = {}
            for s_, (en, dn) in enumerate(zip(enc_names, dec_names)):
                for n, (W, bb) in zip(en + dn, e3[s_] + d3[s_]):
                    by_name[n + ".W"], by_name[n + ".b"] = W, bb
            for tn in tensor_names:
                g = torch.from_numpy(tensors[key + "grad." + tn].astype(np.float64))
                fr = tensor_error(g, by_name[tn].grad) / TOL
                if fr > 1.0:
                    failures.append("%s %s K=%d %s (torch_reference.py's step): %.3g of TOL" % (arch, obj, K, tn, fr))
            if variants and obj == "iwae-dreg" and K > 1:
                encs2, decs2 = fresh()
                _, wrong = hier_bound_and_grads(obj, encs2, decs2, x, epss, K, act, "iwae")
                wf = max(tensor_error(w, r) / TOL for w, r in zip(wrong, ref))
                variant_rows.append((arch, obj, K, "IWAE encoder gradients instead of DReG", wf))
    out("")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", required=True, help="the safetensors file (written by --dump when given)")
    p.add_argument("--dump", default=None, help="run this cuvae_dump_gradients first to write --file")
    p.add_argument("--mnist", default=None,
                   help="MNIST directory for --dump (default: $CUVAE_MNIST_DIR, else data/mnist)")
    p.add_argument("--report", default=None, help="also write the report to this file")
    p.add_argument("--no-variants", action="store_true", help="skip the 'would it notice' check")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    if a.dump:
        mnist = a.mnist or os.environ.get("CUVAE_MNIST_DIR") or os.path.join(REPO_ROOT, "data", "mnist")
        r = subprocess.run([a.dump, a.file, "--mnist", mnist])
        if r.returncode != 0:
            print("error: %s exited with %d" % (a.dump, r.returncode))
            return 1
    tensors, meta = read_safetensors(a.file)
    cases = json.loads(meta["cases"])
    objectives = meta["objectives"].split(",")
    samples = [int(s) for s in meta["samples"].split(",")]

    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    out("gradients_vs_torch: cuvae's analytic gradients vs PyTorch %s autograd in float64" % torch.__version__)
    out("machine: %s, %d cores; date %s; cuvae commit %s" % (
        cpu_model(), os.cpu_count(), datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        meta.get("commit", "?")))
    out("cuvae backend: %s" % meta.get("backend", "?"))
    out("data: %s; batch %s images; params: %s" % (meta.get("data"), meta.get("images"), meta.get("params")))
    out("error per tensor: max|g_cuvae - g_torch| / max|g_torch|, shown as a fraction of TOL = %g" % TOL)
    out("")
    for s in TOLERANCE_NOTE.splitlines():
        out(s)
    out("")

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import torch_reference  # its training step's gradients are checked too
    except SystemExit:
        torch_reference = None
    training_worst = 0.0

    failures = []
    worst_summary = []
    variant_rows = []
    for c in cases:
        arch, act = c["arch"], c["activation"]
        if len(c.get("latents", [c["latent"]])) > 1:
            check_layered_case(c, tensors, samples, objectives, out, failures, worst_summary, variant_rows,
                               not a.no_variants)
            continue
        enc_layers = len(c["hidden"]) + 1
        names = ["encoder.%d" % i for i in range(enc_layers)] + ["decoder.%d" % i for i in range(enc_layers)]
        t64 = lambda n: torch.from_numpy(tensors[n].astype(np.float64))
        x = t64(arch + ".x")
        weight_note = ""
        tensor_names = [n + s for n in names for s in (".W", ".b")]
        out("== %s: 784-%s-%d, %s; columns: %s" % (arch, "-".join(map(str, c["hidden"])), c["latent"], act,
                                                   " ".join(tensor_names)))
        out("%-10s %2s  %-9s %-9s  %s" % ("objective", "K", "bound", "worst", "per tensor (fraction of TOL)"))
        for K in samples:
            eps = t64("%s.K%d.eps" % (arch, K))
            for obj in objectives:
                def fresh():
                    e = [(t64("%s.param.%s.W" % (arch, n)).requires_grad_(),
                          t64("%s.param.%s.b" % (arch, n)).requires_grad_()) for n in names[:enc_layers]]
                    d = [(t64("%s.param.%s.W" % (arch, n)).requires_grad_(),
                          t64("%s.param.%s.b" % (arch, n)).requires_grad_()) for n in names[enc_layers:]]
                    return e, d
                enc, dec = fresh()
                bound, ref = bound_and_grads(obj, enc, dec, x, eps, K, act)
                key = "%s.%s.K%d." % (arch, obj, K)
                cb = torch.from_numpy(tensors[key + "bound"].astype(np.float64))
                berr = float(((cb - bound).abs() / bound.abs().clamp(min=1.0)).max()) / BOUND_TOL
                fracs = []
                for tn, r in zip(tensor_names, ref):
                    g = torch.from_numpy(tensors[key + "grad." + tn].astype(np.float64))
                    fr = tensor_error(g, r) / TOL
                    fracs.append(fr)
                    if fr > 1.0:
                        failures.append("%s %s K=%d %s: %.3g of TOL" % (arch, obj, K, tn, fr))
                if berr > 1.0:
                    failures.append("%s %s K=%d bound: %.3g of BOUND_TOL" % (arch, obj, K, berr))
                worst = max(fracs)
                worst_summary.append((arch, obj, K, worst, tensor_names[fracs.index(worst)], berr))
                out("%-10s %2d  %9.2e %9.2e  %s" % (obj, K, berr, worst, " ".join("%.1e" % f for f in fracs)))
                if torch_reference is not None:
                    e3, d3 = fresh()
                    ep, dp = [q for l in e3 for q in l], [q for l in d3 for q in l]
                    M = outer_samples_for(K) if obj in ("miwae", "piwae") else 1
                    b3, sur = torch_reference.objective_forward(ep, dp, x, torch.full_like(x, 0.5), eps, obj,
                                                                K // M, act, M, CIWAE_BETA)
                    torch_reference.objective_backward(ep, dp, b3, sur)
                    for tn, q in zip(tensor_names, ep + dp):
                        g = torch.from_numpy(tensors[key + "grad." + tn].astype(np.float64))
                        fr = tensor_error(g, q.grad) / TOL
                        training_worst = max(training_worst, fr)
                        if fr > 1.0:
                            failures.append("%s %s K=%d %s (torch_reference.py's step): %.3g of TOL"
                                            % (arch, obj, K, tn, fr))
                if obj == "iwae" and K == max(samples):
                    e1, d1 = fresh()
                    with torch.no_grad():
                        m_, ls_, z_, lp_, pr_ = pieces(e1, d1, x, eps, K, act)
                        lw = lp_ + pr_ - log_normal(z_, m_, ls_)
                        wt = torch.softmax(lw, 1)
                    weight_note = ("K=%d weights: log w spread (max - min over k) per image median %.2f nats, "
                                   "max w~ per image mean %.2f (1/K = %.2f); sigma: median %.3f, 10th percentile %.3f, min %.3f"
                                   % (K, float((lw.max(1).values - lw.min(1).values).median()),
                                      float(wt.max(1).values.mean()), 1.0 / K, float(torch.exp(ls_).median()),
                                      float(torch.quantile(torch.exp(ls_).flatten(), 0.1)), float(torch.exp(ls_).min())))
                if not a.no_variants:
                    for variant, what in WRONG_VARIANTS[obj]:
                        if K == 1 and variant == "stl":
                            continue  # w~ = 1: STL is DReG at K = 1
                        if K == 1 and obj in ("miwae", "piwae", "ciwae"):
                            continue  # one sample: MIWAE, IWAE and the sampled ELBO are one bound
                        enc2, dec2 = fresh()
                        _, wrong = bound_and_grads(obj, enc2, dec2, x, eps, K, act, variant)
                        wf = max(tensor_error(w, r) / TOL for w, r in zip(wrong, ref))
                        variant_rows.append((arch, obj, K, what, wf))
        out(weight_note)
        out("")

    out("== summary: worst tensor per case (fraction of TOL; bound error as a fraction of BOUND_TOL)")
    out("%-10s %-10s %2s  %-9s %-13s %s" % ("arch", "objective", "K", "worst", "tensor", "bound"))
    for arch, obj, K, w, tn, berr in worst_summary:
        out("%-10s %-10s %2d  %9.2e %-13s %9.2e" % (arch, obj, K, w, tn, berr))
    out("")
    if torch_reference is not None:
        out("== tools/torch/torch_reference.py's training step (objective_forward/backward, run in float64 on the same")
        out("   tensors) against cuvae's gradients: worst tensor %.3g of TOL over every case" % training_worst)
        out("")
    if variant_rows:
        out("== would it notice: wrong gradients computed in float64, their worst tensor's distance from the")
        out("   reference in fractions of TOL (> 1 means the check would fail on that bug)")
        for arch, obj, K, what, wf in variant_rows:
            out("%-10s %-10s K=%d  %-40s %10.3g" % (arch, obj, K, what, wf))
        out("")
    if failures:
        out("FAILED: %d tensors or bounds outside tolerance:" % len(failures))
        for f in failures:
            out("  " + f)
    else:
        out("PASSED: every gradient tensor within TOL = %g, every bound within %g relative "
            "(worst fraction %.3g)" % (TOL, BOUND_TOL, max(w for _, _, _, w, _, _ in worst_summary)))
    if a.report:
        with open(a.report, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
