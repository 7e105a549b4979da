#!/usr/bin/python3
"""Golden reference for memtrain's CNN kernels (core/kernels/cpu/cnn_ops.h): PyTorch's own modules
(nn.Conv2d, nn.BatchNorm2d in training and eval mode, ReLU, nn.MaxPool2d with return_indices,
nn.Linear, F.cross_entropy), run in float64 on float32-representable values.

The network: x (4, 2, 9, 8) -> conv1 3x3 pad 1 (3 ch) -> BN (train, momentum 0.1, running stats
not at their defaults) -> ReLU -> max-pool 2x2 (9x8 -> 4x4: the odd row dropped) -> conv2 3x3
stride 2 pad 1 (5 ch, 2x2) -> ReLU -> flatten (20) -> linear (10 classes) -> cross-entropy, mean.

Writes data/cnn_kernels_golden.json: {"name": {"shape": [...], "data": [...]}} with the inputs and
parameters, every intermediate output (including the BN running statistics after the step, the
pool's indices, and BN in eval mode with the updated statistics), the loss, and the gradient of the
loss with respect to x and every parameter.

Run with Debian's python3-torch:  /usr/bin/python3 tests/golden/make_cnn_kernels_golden.py
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cnn_kernels_golden.json")
B, C, H, W, C1, C2, CLASSES = 4, 2, 9, 8, 3, 5, 10

torch.manual_seed(1234)


def f32(t):
    return t.float().double()


conv1 = nn.Conv2d(C, C1, 3, stride=1, padding=1).double()
bn = nn.BatchNorm2d(C1, eps=1e-5, momentum=0.1).double()
conv2 = nn.Conv2d(C1, C2, 3, stride=2, padding=1).double()
head = nn.Linear(C2 * 2 * 2, CLASSES).double()
with torch.no_grad():
    for m in (conv1, conv2, head):
        m.weight.copy_(f32(m.weight))
        m.bias.copy_(f32(0.2 * torch.randn_like(m.bias)))
    bn.weight.copy_(f32(1 + 0.2 * torch.randn(C1)))
    bn.bias.copy_(f32(0.2 * torch.randn(C1)))
    bn.running_mean.copy_(f32(0.3 * torch.randn(C1)))
    bn.running_var.copy_(f32(0.5 + torch.rand(C1)))

x = f32(torch.randn(B, C, H, W)).requires_grad_(True)
targets = torch.tensor([3, 0, 9, 5])

tensors = {
    "x": x, "targets": targets.double(),
    "conv1.weight": conv1.weight, "conv1.bias": conv1.bias,
    "bn.weight": bn.weight, "bn.bias": bn.bias,
    "bn.running_mean0": bn.running_mean.clone(), "bn.running_var0": bn.running_var.clone(),
    "conv2.weight": conv2.weight, "conv2.bias": conv2.bias,
    "head.weight": head.weight, "head.bias": head.bias,
}

bn.train()
c1 = conv1(x)
b1 = bn(c1)
r1 = F.relu(b1)
p1, idx = F.max_pool2d(r1, 2, 2, return_indices=True)
c2 = conv2(p1)
r2 = F.relu(c2)
logits = head(r2.flatten(1))
loss = F.cross_entropy(logits, targets)
loss.backward()
bn.eval()
with torch.no_grad():
    b1_eval = bn(c1)

tensors.update({
    "conv1.out": c1, "bn.out": b1, "bn.running_mean1": bn.running_mean,
    "bn.running_var1": bn.running_var, "bn.eval_out": b1_eval, "pool.out": p1,
    "pool.indices": idx.double(), "conv2.out": c2, "logits": logits, "loss": loss,
    "grad.x": x.grad, "grad.conv1.weight": conv1.weight.grad, "grad.conv1.bias": conv1.bias.grad,
    "grad.bn.weight": bn.weight.grad, "grad.bn.bias": bn.bias.grad,
    "grad.conv2.weight": conv2.weight.grad, "grad.conv2.bias": conv2.bias.grad,
    "grad.head.weight": head.weight.grad, "grad.head.bias": head.bias.grad,
})

out = {k: {"shape": list(v.shape), "data": v.detach().reshape(-1).tolist()}
       for k, v in tensors.items()}
os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
print(f"wrote {OUT}: loss {loss.item():.6f}")
