#!/usr/bin/python3
"""Golden reference for memtrain's GPT-2: an independent implementation in PyTorch (float64).

Writes, for a tiny config (L=2, C=64, NH=4, V=256, maxT=32, B=2, T=16):
  data/gpt2_tiny.bin           llm.c checkpoint (version 3, fp32) with the initial weights
  data/gpt2_tiny_tokens.bin    llm.c token file with B*T+1 tokens
  data/gpt2_tiny_expected.bin  named tensors: logits (B,T,V), loss, the gradient of each of the 16
                               llm.c tensors, and the losses of 10 steps on that batch with
                               PyTorch's AdamW and with llm.c's AdamW update.
The model is written from the llm.c layout (linear weights (out, in), qkv rows [Q; K; V], tied LM
head, tanh GELU, LayerNorm eps 1e-5), not from memtrain's code.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_gpt2_golden.py
"""
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

L, C, NH, V, Vp, maxT, B, T = 2, 64, 4, 256, 256, 32, 2, 16
STEPS, LR, BETAS, EPS, WD = 10, 1e-3, (0.9, 0.999), 1e-8, 0.1
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

SHAPES = [
    ("wte", (Vp, C)), ("wpe", (maxT, C)),
    ("ln1w", (L, C)), ("ln1b", (L, C)), ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
    ("attprojw", (L, C, C)), ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)),
    ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
    ("lnfw", (C,)), ("lnfb", (C,)),
]


def init_params(gen):
    p = {}
    for name, shape in SHAPES:
        if name in ("ln1w", "ln2w", "lnfw"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)  # not all ones: exercise the scale
        elif len(shape) == 1 or (len(shape) == 2 and name.endswith("b")):
            t = 0.02 * torch.randn(shape, generator=gen)  # non-zero biases
        else:
            std = 0.02 / math.sqrt(2 * L) if name in ("attprojw", "fcprojw") else 0.02
            t = std * torch.randn(shape, generator=gen)
        # The checkpoint is fp32; the reference computes in float64 from those exact values.
        p[name] = t.float().double().requires_grad_(True)
    return p


def forward(p, idx, tgt):
    HS = C // NH
    x = p["wte"][idx] + p["wpe"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for l in range(L):
        h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], eps=1e-5)
        qkv = h @ p["qkvw"][l].T + p["qkvb"][l]
        q, k, v = (t.view(B, T, NH, HS).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
        h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], eps=1e-5)
        h = F.gelu(h @ p["fcw"][l].T + p["fcb"][l], approximate="tanh")
        x = x + h @ p["fcprojw"][l].T + p["fcprojb"][l]
    x = F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], eps=1e-5)
    logits = x @ p["wte"].T  # tied LM head, (B, T, Vp)
    loss = F.cross_entropy(logits[..., :V].reshape(-1, V), tgt.reshape(-1))
    return logits, loss


def write_named(path, items):
    with open(path, "wb") as f:
        f.write(b"MTGOLD1\0")
        f.write(struct.pack("<i", len(items)))
        for name, arr in items:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            nb = name.encode()
            f.write(struct.pack("<i", len(nb)) + nb)
            f.write(struct.pack("<i", arr.ndim))
            f.write(struct.pack("<%dq" % arr.ndim, *arr.shape))
            f.write(arr.tobytes())


def main():
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(20241127)
    p = init_params(gen)
    tokens = torch.randint(0, V, (B * T + 1,), generator=gen)
    idx, tgt = tokens[:-1].view(B, T), tokens[1:].view(B, T)
    os.makedirs(OUT, exist_ok=True)

    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3, maxT, V, L, NH, C, Vp]
    with open(os.path.join(OUT, "gpt2_tiny.bin"), "wb") as f:
        f.write(header.tobytes())
        for name, _ in SHAPES:
            f.write(p[name].detach().numpy().astype(np.float32).tobytes())
    theader = np.zeros(256, dtype=np.int32)
    theader[:3] = [20240520, 1, B * T + 1]
    with open(os.path.join(OUT, "gpt2_tiny_tokens.bin"), "wb") as f:
        f.write(theader.tobytes())
        f.write(tokens.numpy().astype(np.uint16).tobytes())

    logits, loss = forward(p, idx, tgt)
    loss.backward()
    items = [("logits", logits[..., :V].detach().numpy()),
             ("loss", np.array([loss.item()]))]
    items += [("grad." + name, p[name].grad.numpy().copy()) for name, _ in SHAPES]

    opt = torch.optim.AdamW([p[n] for n, _ in SHAPES], lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        _, loss = forward(p, idx, tgt)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    items.append(("adamw_losses", np.array(losses)))

    # llm.c's own update (gpt2_update in train_gpt2.c), written out here: m, v with bias
    # correction, theta -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta), decay on every tensor.
    p = init_params(torch.Generator().manual_seed(20241127))
    m = {n: torch.zeros_like(p[n]) for n, _ in SHAPES}
    v = {n: torch.zeros_like(p[n]) for n, _ in SHAPES}
    llmc_losses = []
    for step in range(1, STEPS + 1):
        for n, _ in SHAPES:
            p[n].grad = None
        _, loss = forward(p, idx, tgt)
        loss.backward()
        llmc_losses.append(loss.item())
        with torch.no_grad():
            for n, _ in SHAPES:
                g = p[n].grad
                m[n] = BETAS[0] * m[n] + (1 - BETAS[0]) * g
                v[n] = BETAS[1] * v[n] + (1 - BETAS[1]) * g * g
                m_hat = m[n] / (1 - BETAS[0] ** step)
                v_hat = v[n] / (1 - BETAS[1] ** step)
                p[n] -= LR * (m_hat / (v_hat.sqrt() + EPS) + WD * p[n])
    items.append(("llmc_adamw_losses", np.array(llmc_losses)))
    write_named(os.path.join(OUT, "gpt2_tiny_expected.bin"), items)
    print("loss %.6f; AdamW losses %s" % (items[1][1][0], " ".join("%.5f" % l for l in losses)))


if __name__ == "__main__":
    main()
