"""The oracle itself: irnn_reference against torch.nn.RNN, float64, on every
output and gradient, over the covering set of options and sizes."""
import pytest
import torch

from conftest import (NETWORK_OPTIONS, all_pairs, assert_close_rel, case_id,
                      inputs_for, nn_rnn_for)
from irnn_cuda import irnn_reference

CASES = all_pairs(NETWORK_OPTIONS)


def grads(output, h_n, wrt):
    """Gradients of a loss that touches every output and every state."""
    go, gh = torch.randn_like(output), torch.randn_like(h_n)
    loss = (output * go).sum() + (h_n * gh).sum()
    return torch.autograd.grad(loss, [t for t in wrt if t is not None])


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_reference_matches_nn_rnn(c):
    rnn = nn_rnn_for(c)
    x, hx = inputs_for(c)
    params = list(rnn.parameters())
    out_rnn, h_rnn = rnn(x, hx)
    batch_dim = 0 if c["batch_first"] else 1
    batched_x = x if c["batched"] else x.unsqueeze(batch_dim)
    batched_hx = None if hx is None else (hx if c["batched"] else hx.unsqueeze(1))
    if batched_hx is None:
        dirs = 2 if c["bidirectional"] else 1
        B = batched_x.shape[0 if c["batch_first"] else 1]
        batched_hx = torch.zeros(c["num_layers"] * dirs, B, c["H"], dtype=x.dtype)
    out_ref, h_ref = irnn_reference(batched_x, batched_hx, rnn._flat_weights,
                                    c["nonlinearity"], c["num_layers"],
                                    c["bidirectional"], c["batch_first"])
    if not c["batched"]:
        out_ref, h_ref = out_ref.squeeze(batch_dim), h_ref.squeeze(1)
    assert_close_rel(out_ref, out_rnn, 1e-12, "output")
    assert_close_rel(h_ref, h_rnn, 1e-12, "h_n")
    torch.manual_seed(1)
    g_rnn = grads(out_rnn, h_rnn, [x, hx] + params)
    torch.manual_seed(1)
    g_ref = grads(out_ref, h_ref, [x, hx] + params)
    for a, b in zip(g_ref, g_rnn):
        assert_close_rel(a, b, 1e-10, "gradient")
