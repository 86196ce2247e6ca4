"""Rewrites of an exported ONNX graph so that ONNX Runtime sees the QDQ pattern it fuses.

1. ``fold_weight_quantization``: QuantizeLinear on a constant float weight becomes the int8 codes
   themselves (an int8 initializer feeding DequantizeLinear), so the file holds 1 byte per weight.
2. ``fold_weight_transposes``: ``DequantizeLinear(W) -> Transpose -> MatMul`` (how nn.Linear is
   exported) becomes ``DequantizeLinear(Wᵀ, axis=1) -> MatMul``; a Transpose between the
   DequantizeLinear and the MatMul hides the pattern from ORT's QDQ fusion.
3. ``gemms_to_matmuls``: ``Gemm(DQ(x), DQ(W), b, transB=1)`` (how a Linear on a 2-D input, such as
   a classifier head on the CLS token, is exported) becomes ``MatMul(DQ(x), DQ(Wᵀ)) + b``, which ORT
   fuses into an integer kernel; it leaves a QDQ Gemm with a float output in float.
4. ``gather_rows_before_dequantize``: ``DequantizeLinear(table) -> Gather(ids)`` (a quantized
   token-embedding table) becomes ``Gather(codes, ids) -> Cast -> Mul(Gather(scale, ids))``: only
   the looked-up rows are dequantized, and the table stays int8 in memory on every runtime.
5. ``store_weights_unsigned``: int8 weight codes beyond [-64, 64] become uint8 codes + 128 with
   the zero-point moved by 128 (the same values), for CPUs whose u8×s8 kernels saturate
   (see :mod:`vitq.export.cpu`); their u8×u8 kernels are exact.
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


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _qdq_source(g: _Graph, name: str):
    """For ``name`` = DQ(Q(x)) whose Q and DQ feed nothing else: (Q node, x); else None."""
    dq = g.producer.get(name)
    q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear" or len(g.consumers[q.output[0]]) != 1 or len(g.consumers[name]) != 1:
        return None
    return q, q.input[0]


def gemms_to_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite weighted QDQ Gemms as 3-D MatMul + Add. ORT would fuse a 2-D MatMul + Add back into a
    Gemm (MatMulAddFusion) before its QDQ fusion, so a quantized 2-D input is unsqueezed to
    [N, 1, K] ahead of its QuantizeLinear (per-tensor quantization commutes with reshapes) and the
    result squeezed back."""
    g = _Graph(model)
    count = 0
    new_nodes = []
    axes = None
    for node in g.graph.node:
        dq = g.producer.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        w = g.constant(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        plain = (_attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0 and _attr(node, "transA", 0) == 0)
        if w is None or w.ndim != 2 or not plain or len(g.consumers[dq.output[0]]) != 1:
            new_nodes.append(node)
            continue
        if _attr(node, "transB", 0):
            dq.input[0] = g.add_initializer(np.ascontiguousarray(w.T), g.resolve(dq.input[0]) + "_t")
            scale = g.constant(dq.input[1])
            if scale is not None and scale.size > 1:
                _set_axis(dq, 1 - (_axis(dq) % 2))
        source = _qdq_source(g, node.input[0])
        lhs, out = node.input[0], node.output[0]
        if source is not None:
            q, x = source
            axes = axes or g.add_initializer(np.array([1], np.int64), "vitq_unsqueeze_axis1")
            q.input[0] = x + "_unsqueezed"
            new_nodes.insert(new_nodes.index(q), helper.make_node("Unsqueeze", [x, axes], [q.input[0]], name=node.name + "_unsqueeze"))
            out = node.output[0] + "_3d"
        has_bias = len(node.input) > 2 and node.input[2]
        product = out + "_matmul" if has_bias else out
        new_nodes.append(helper.make_node("MatMul", [lhs, node.input[1]], [product], name=node.name + "_matmul"))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [product, node.input[2]], [out], name=node.name + "_bias"))
        if source is not None:
            new_nodes.append(helper.make_node("Squeeze", [out, axes], [node.output[0]], name=node.name + "_squeeze"))
        count += 1
    del g.graph.node[:]
    g.graph.node.extend(new_nodes)
    g.prune_unused_initializers()
    return count


def gather_rows_before_dequantize(model: onnx.ModelProto) -> int:
    """Gather the int8 rows of a per-row (or per-tensor) quantized table, then dequantize them: the
    same values as dequantizing the whole table first, ((q - z) · s per element)."""
    g = _Graph(model)
    count, new_nodes, dead = 0, [], set()
    for node in g.graph.node:
        if id(node) in dead:
            continue
        dq = g.producer.get(node.input[0]) if node.op_type == "Gather" else None
        codes = g.constant(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        scale = g.constant(dq.input[1]) if codes is not None else None
        zp = g.constant(dq.input[2]) if codes is not None and len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        per_row = scale is not None and scale.size > 1 and _axis(dq) % max(codes.ndim, 1) == 0
        if (codes is None or codes.ndim != 2 or scale is None or zp is None or _attr(node, "axis", 0) != 0
                or not (per_row or scale.size == 1) or len(g.consumers[dq.output[0]]) != 1):
            new_nodes.append(node)
            continue
        ids, out, base = node.input[1], node.output[0], node.name or out
        table = g.resolve(dq.input[0])
        rows = helper.make_node("Gather", [table, ids], [out + "_codes"], name=base + "_codes", axis=0)
        as_float = helper.make_node("Cast", [rows.output[0]], [out + "_float"], name=base + "_cast", to=onnx.TensorProto.FLOAT)
        steps, value = [rows, as_float], as_float.output[0]
        last = g.add_initializer(np.array([-1], np.int64), "vitq_last_axis")

        def per_row_constant(array: np.ndarray, tag: str) -> str:
            """The constant's entries of the looked-up rows, shaped [..., 1]; a scalar as it is."""
            if array.size == 1:
                return g.add_initializer(array.reshape(()).astype(np.float32), f"{table}_{tag}")
            name = g.add_initializer(array.reshape(-1).astype(np.float32), f"{table}_{tag}")
            picked = helper.make_node("Gather", [name, ids], [f"{out}_{tag}_rows"], name=f"{base}_{tag}_rows", axis=0)
            column = helper.make_node("Unsqueeze", [picked.output[0], last], [f"{out}_{tag}"], name=f"{base}_{tag}_column")
            steps.extend([picked, column])
            return column.output[0]

        if np.any(zp != 0):
            zero = per_row_constant(zp, "zero_point")
            steps.append(helper.make_node("Sub", [value, zero], [out + "_centred"], name=base + "_centre"))
            value = steps[-1].output[0]
        steps.append(helper.make_node("Mul", [value, per_row_constant(scale, "scale")], [out], name=base + "_dequantize"))
        new_nodes = [n for n in new_nodes if n is not dq] + steps
        dead.add(id(dq))
        count += 1
    del g.graph.node[:]
    g.graph.node.extend(n for n in new_nodes if id(n) not in dead)
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


def _wide_int8_weights(g: _Graph):
    """(DequantizeLinear node, codes) of every int8 weight whose codes leave [-SAFE_CODE, SAFE_CODE]."""
    from .cpu import SAFE_CODE

    for dq in g.graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        w = g.constant(dq.input[0])
        if w is not None and w.dtype == np.int8 and w.ndim >= 2 and (w.min() < -SAFE_CODE or w.max() > SAFE_CODE):
            yield dq, w


def count_wide_int8_weights(model: onnx.ModelProto) -> int:
    return sum(1 for _ in _wide_int8_weights(_Graph(model)))


def store_weights_unsigned(model: onnx.ModelProto) -> int:
    """Rewrite wide int8 weights as uint8 (codes + 128, zero-point + 128): the same dequantized values."""
    g = _Graph(model)
    count = 0
    for dq, w in list(_wide_int8_weights(g)):
        zp = g.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        if zp is None:
            continue
        base = g.resolve(dq.input[0])
        dq.input[0] = g.add_initializer((w.astype(np.int16) + 128).astype(np.uint8), base + "_u8")
        # A new zero-point per weight: the exporter shares equal constants between layers.
        zp_name = g.add_initializer((zp.astype(np.int16) + 128).astype(np.uint8), base + "_u8_zero_point")
        if len(dq.input) > 2:
            dq.input[2] = zp_name
        else:
            dq.input.append(zp_name)
        count += 1
    g.prune_unused_initializers()
    return count


WEIGHT_DTYPES = ("auto", "int8", "uint8")


def optimize_qdq_graph(model: onnx.ModelProto, weight_dtype: str = "auto") -> dict:
    """Apply every rewrite; returns how many of each were made.

    ``weight_dtype``: ``int8`` keeps signed weight codes; ``uint8`` stores wide ones unsigned;
    ``auto`` does so only where this CPU's u8×s8 kernels saturate.
    """
    from .cpu import u8s8_saturates

    stats = {"identities_inlined": inline_constant_identities(model), "weights_folded": fold_weight_quantization(model),
             "transposes_folded": fold_weight_transposes(model), "gemms_to_matmuls": gemms_to_matmuls(model),
             "tables_gathered_first": gather_rows_before_dequantize(model)}
    unsigned = weight_dtype == "uint8" or (weight_dtype == "auto" and u8s8_saturates())
    stats["weights_unsigned"] = store_weights_unsigned(model) if unsigned else 0
    stats["wide_int8_weights"] = count_wide_int8_weights(model)
    return stats
