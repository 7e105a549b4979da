#!/usr/bin/env python3
"""PyTorch's training step on the same GPT-2 124M as bench_gpt2_cuda, for a side-by-side figure.

    python3 bench/pytorch_gpt2.py [--batches 4,8,16] [--T 1024] [--steps 10] [--compile]

A plain GPT-2 (tied embedding, pre-LayerNorm, GELU tanh, scaled_dot_product_attention with the
causal flag, which picks the flash kernel), AdamW (fused), bf16 autocast with fp32 weights, and
fp32. FLOPs per token as llm.c counts them: 6*N + 6*L*C*T; MFU against 989.4 TFLOP/s dense bf16.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

L, C, NH, V, VP = 12, 768, 12, 50257, 50304


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VP, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits[..., :V].float().reshape(-1, V), targets.reshape(-1))


def run(batch, T, steps, bf16, compile_model):
    torch.manual_seed(0)
    model = GPT(T).cuda()
    n_params = sum(p.numel() for p in model.parameters()) - VP * C + V * C
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
    step_fn = torch.compile(model) if compile_model else model
    idx = torch.randint(0, V, (batch, T), device="cuda")
    tgt = torch.randint(0, V, (batch, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn(idx, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    flops = (6 * n_params + 6 * L * C * T) * batch * T / dt
    print(f"  torch {'bf16' if bf16 else 'fp32'}{' compiled' if compile_model else ''} B={batch} "
          f"T={T}  step {1e3 * dt:7.1f} ms  {batch * T / dt:9.0f} tokens/s  "
          f"{flops / 1e12:6.1f} TFLOP/s  MFU {100 * flops / 989.4e12:5.1f}%  loss {loss.item():.3f}"
          f"  peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", default="both", choices=["both", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in memtrain
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for bf16 in ([True, False] if a.precision == "both" else [a.precision == "bf16"]):
        for b in (int(x) for x in a.batches.split(",")):
            run(b, a.T, a.steps, bf16, a.compile)


if __name__ == "__main__":
    main()
