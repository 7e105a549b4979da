#!/usr/bin/env python3
"""Writes tests/golden/data/cnn_tiny.bin: an independent float64 PyTorch reference for memtrain's
core::Cnn (tests/golden/cnn_golden_test.cc reads it).

The model: conv3x3(1->4, pad 1) BN ReLU maxpool2, conv3x3(4->6, pad 1) BN ReLU maxpool2,
flatten, linear(6*2*2 -> 3), on 8x8 images, B = 5, softmax cross-entropy with one ignored label.
Recorded: the parameters (memtrain's block layout: per conv w, b, bn_w, bn_b, bn_mean, bn_var;
head w, b), the images and labels, the training-mode logits and mean loss, every parameter
gradient, the BN running statistics after that training forward, and the logits of an
evaluation forward afterwards (running statistics).

File layout (little-endian): int32 count of float64 arrays, then per array an int32 length and
the values. Order: params of every block (flat, block order), images, labels (as float64),
train logits, loss (1), grads of every block (flat), params after the forward (the running
statistics moved), eval logits.

Run: python3 tests/golden/make_cnn_golden.py  (needs python3-torch)
"""
import os
import struct

import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
B, H, W, K = 5, 8, 8, 3

conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
bn1 = torch.nn.BatchNorm2d(4)
conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
bn2 = torch.nn.BatchNorm2d(6)
head = torch.nn.Linear(6 * 2 * 2, K)
with torch.no_grad():  # non-trivial BN affine parameters and running statistics
    for bn in (bn1, bn2):
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.8, 1.2)
layers = [(conv1, bn1), (conv2, bn2)]


def forward(x):
    for conv, bn in layers:
        x = torch.nn.functional.max_pool2d(torch.relu(bn(conv(x))), 2)
    return head(x.flatten(1))


def flat_params():
    out = []
    for conv, bn in layers:
        out.append(torch.cat([conv.weight.detach().flatten(), conv.bias.detach(), bn.weight.detach(),
                              bn.bias.detach(), bn.running_mean.clone(), bn.running_var.clone()]))
    out.append(torch.cat([head.weight.detach().flatten(), head.bias.detach()]))
    return out


def flat_grads():
    out = []
    for conv, bn in layers:
        z = torch.zeros_like(bn.running_mean)
        out.append(torch.cat([conv.weight.grad.flatten(), conv.bias.grad, bn.weight.grad,
                              bn.bias.grad, z, z]))
    out.append(torch.cat([head.weight.grad.flatten(), head.bias.grad]))
    return out


params = flat_params()
x = torch.randn(B, 1, H, W)
labels = torch.tensor([0, 2, -1, 1, 2])
for m in (conv1, bn1, conv2, bn2, head):
    m.train()
logits = forward(x)
loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1)
loss.backward()
grads = flat_grads()
moved = flat_params()
for m in (bn1, bn2):
    m.eval()
with torch.no_grad():
    eval_logits = forward(x)

arrays = params + [x.flatten(), labels.double(), logits.detach().flatten(), loss.detach().reshape(1)]
arrays += grads + moved + [eval_logits.flatten()]
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "cnn_tiny.bin")
with open(path, "wb") as f:
    f.write(struct.pack("<i", len(arrays)))
    for a in arrays:
        a = a.detach().double().contiguous()
        f.write(struct.pack("<i", a.numel()))
        f.write(struct.pack("<%dd" % a.numel(), *a.tolist()))
print("wrote", path, "loss", float(loss))
