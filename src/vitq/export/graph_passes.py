"""Rewrites of an exported ONNX graph so that ONNX Runtime sees the QDQ pattern it fuses.

1. ``fold_weight_quantization``: QuantizeLinear on a constant float weight becomes the int8 codes
   themselves (an int8 initializer feeding DequantizeLinear), so the file holds 1 byte per weight.
2. ``fold_weight_transposes``: ``DequantizeLinear(W) -> Transpose -> MatMul`` (how nn.Linear is
   exported) becomes ``DequantizeLinear(Wᵀ, axis=1) -> MatMul``; a Transpose between the
   DequantizeLinear and the MatMul hides the pattern from ORT's QDQ fusion.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


class _Graph:
    """Constants (initializers and Constant nodes) and consumers of a graph, for small rewrites."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.const_nodes = {n.output[0]: n for n in self.graph.node if n.op_type == "Constant"}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)

    def resolve(self, name: str) -> str:
        """Follow Identity nodes back to their source."""
        while name in self.producer and self.producer[name].op_type == "Identity":
            name = self.producer[name].input[0]
        return name

    def constant(self, name: str) -> np.ndarray | None:
        name = self.resolve(name)
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.const_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        base, i = name, 0
        while name in self.inits or name in self.producer:
            i += 1
            name = f"{base}_{i}"
        t = numpy_helper.from_array(array, name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name

    def remove_nodes(self, nodes) -> None:
        drop = {id(n) for n in nodes}
        keep = [n for n in self.graph.node if id(n) not in drop]
        del self.graph.node[:]
        self.graph.node.extend(keep)

    def redirect(self, old: str, new: str) -> None:
        """Make every node that reads tensor ``old`` read ``new`` instead."""
        for consumer in self.consumers[old]:
            consumer.input[:] = [new if i == old else i for i in consumer.input]

    def prune_unused_initializers(self) -> None:
        used = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        for a in self.graph.node:
            for attr in a.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    used |= {i for n in attr.g.node for i in n.input}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        # Identity nodes that only forwarded a weight now feed nothing.
        while True:
            outputs = {o.name for o in self.graph.output}
            used_inputs = {i for n in self.graph.node for i in n.input}
            dead = [n for n in self.graph.node if n.op_type in ("Identity", "Constant") and n.output[0] not in used_inputs and n.output[0] not in outputs]
            if not dead:
                break
            self.remove_nodes(dead)


def _axis(node, default: int = 1) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return a.i
    return default


def _set_axis(node, axis: int) -> None:
    for a in node.attribute:
        if a.name == "axis":
            a.i = axis
            return
    node.attribute.append(helper.make_attribute("axis", axis))


def _quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear on constants: round half to even, saturate to the zero-point's type."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    info = np.iinfo(zp.dtype)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32)) + zp.astype(np.int32)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    g = _Graph(model)
    dead, count = [], 0
    for node in list(g.graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        x = g.constant(node.input[0])
        scale = g.constant(node.input[1])
        zp = g.constant(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if x is None or scale is None or zp is None or x.dtype != np.float32:
            continue
        codes = _quantize(x, scale, zp, _axis(node))
        name = g.add_initializer(codes, g.resolve(node.input[0]) + "_quantized")
        g.redirect(node.output[0], name)
        dead.append(node)
        count += 1
    g.remove_nodes(dead)
    g.prune_unused_initializers()
    return count


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    g = _Graph(model)
    dead, count = [], 0
    for dq in list(g.graph.node):
        if dq.op_type != "DequantizeLinear":
            continue
        w = g.constant(dq.input[0])
        users = g.consumers[dq.output[0]]
        if w is None or w.ndim != 2 or len(users) != 1 or users[0].op_type != "Transpose":
            continue
        tr = users[0]
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0] or len(g.consumers[dq.input[0]]) != 1:
            continue
        dq.input[0] = g.add_initializer(np.ascontiguousarray(w.T), g.resolve(dq.input[0]) + "_t")
        scale = g.constant(dq.input[1])
        if scale is not None and scale.size > 1:
            _set_axis(dq, 1 - (_axis(dq) % 2))
        g.redirect(tr.output[0], dq.output[0])
        for o in g.graph.output:
            if o.name == tr.output[0]:
                o.name = dq.output[0]
        dead.append(tr)
        count += 1
    g.remove_nodes(dead)
    g.prune_unused_initializers()
    return count


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Identity nodes that only forward an initializer (the exporter's de-duplication) are bypassed,
    so every QDQ scale and zero-point is read straight from an initializer."""
    g = _Graph(model)
    outputs = {o.name for o in g.graph.output}
    dead = []
    for node in g.graph.node:
        if node.op_type != "Identity" or node.output[0] in outputs:
            continue
        src = g.resolve(node.input[0])
        if src not in g.inits:
            continue
        g.redirect(node.output[0], src)
        dead.append(node)
    g.remove_nodes(dead)
    return len(dead)


def optimize_qdq_graph(model: onnx.ModelProto) -> dict:
    """Apply every rewrite; returns how many of each were made."""
    return {"identities_inlined": inline_constant_identities(model), "weights_folded": fold_weight_quantization(model),
            "transposes_folded": fold_weight_transposes(model)}
