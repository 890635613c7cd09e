"""The Python package's structure: no import cycle among its modules, the
fused-input contract against the kernels' capacities, and where the choice
of the reference fallback is made."""
import ast
import os
import re

import pytest
import torch

import irnn_cuda
from irnn_cuda import functional
from irnn_cuda.reference import irnn_layer_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "irnn_cuda")


def package_imports():
    """{module: set of irnn_cuda modules it imports}, from every import
    statement in its source (at module level or inside functions)."""
    modules = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py")}
    graph = {}
    for module in modules:
        with open(os.path.join(PACKAGE, module + ".py")) as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0 and (node.module or "").split(".")[0] != "irnn_cuda":
                    continue
                base = (node.module or "").split(".")
                base = base[1:] if node.level == 0 else base
                if base and base[0]:
                    targets.add(base[0])
                else:  # from . import a, b
                    targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "irnn_cuda" and len(parts) > 1:
                        targets.add(parts[1])
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph):
    """A list of modules forming a cycle, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_package_imports_have_no_cycle():
    graph = package_imports()
    assert "network" in graph["functional"] and "network" in graph["reference"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_fused_input_max_within_every_kernel_capacity():
    if not irnn_cuda.extension_loaded():
        pytest.skip("irnn_cuda._C is not built")
    with open(os.path.join(ROOT, "csrc", "cpu", "irnn_cpu_params.h")) as f:
        header = int(re.search(r"kMaxFusedInput = (\d+);", f.read()).group(1))
    capacities = functional.kernel_input_capacities()
    assert capacities == {"cpu": header}
    assert all(functional.FUSED_INPUT_MAX <= cap for cap in capacities.values())


def test_contract_above_a_capacity_fails_the_import_check():
    functional.check_fused_input_max(8, {"cpu": 8})
    with pytest.raises(ImportError, match=r"FUSED_INPUT_MAX = 9 exceeds .* cpu \(8\)"):
        functional.check_fused_input_max(9, {"cpu": 8})


# The fallback warning itself (once per device type) is tested in
# test_module.py; the meta device has no compiled kernels.
@pytest.mark.filterwarnings("ignore:irnn_cuda.*falling back")
def test_layer_function_falls_back_only_without_kernels():
    if irnn_cuda.has_kernels("cpu"):
        assert functional.layer_function("cpu") is functional.irnn_layer
    assert functional.layer_function("meta") is irnn_layer_reference


@pytest.mark.filterwarnings("ignore:irnn_cuda.*falling back")
def test_rnn_forward_on_a_device_without_kernels_runs_the_reference():
    """rnn_forward takes the reference on the meta device (whose shapes
    come out), where irnn_layer itself would not run."""
    T, B, I, H = 3, 2, 1, 4
    x = torch.empty(T, B, I, device="meta")
    hx = torch.empty(1, B, H, device="meta")
    weights = [torch.empty(H, I, device="meta"), torch.empty(H, H, device="meta")]
    out, h_n = irnn_cuda.rnn_forward(x, hx, weights, "relu", 1, False, False,
                                     0.0, False)
    assert out.shape == (T, B, H) and h_n.shape == (1, B, H)
