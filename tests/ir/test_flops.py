import torch

from rtinfer import models
from rtinfer.frontends import capture
from rtinfer.ir.flops import flops
from rtinfer.pass_manager import run_pipeline


def test_resnet18_is_3_6_gflop_before_and_after_fusion():
    g = capture(models.resnet18().eval(), (models.image_input(),))
    before = flops(g)
    assert abs(before - 3.628e9) < 0.01e9  # torchvision's published 1.8 GMACs
    run_pipeline(g, "O3")
    assert flops(g) == before  # fusion moves no arithmetic


def test_linear_matmul_attention_counts():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 32)

        def forward(self, q, k, v):
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [1, 2, 5, 8]
            return self.lin(a.reshape(1, 10, 8).repeat(1, 1, 2)), q @ k.transpose(-1, -2)

    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    g = capture(M().eval(), (q, k, v))
    want = 2 * 10 * 16 * 32 + (2 * 80 * 7 + 2 * 80 * 7) + 2 * (2 * 5 * 7) * 8
    assert flops(g) == want
