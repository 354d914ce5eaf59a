"""BiLSTM inference fast path: the LSTM input projection of every vocabulary entry precomputed at export.

At inference both embedding tables are constants, so ``W_ih [frozen(v); trainable(v)] + b_ih + b_hh`` is a fixed
``4 * hidden`` vector per vocabulary entry ``v`` and direction. The ONNX graph built here gathers these gate inputs
(a table look-up replacing the ``[time, 768] x [768, 600]`` matrix product per direction) and runs only the
recurrence: an ONNX ``Scan`` over time whose step advances both directions at once (a batched ``[2, batch, hidden] x
[2, hidden, 4 * hidden]`` product), then the pooling and the task head of ``BiLSTMStudent``. Same inputs and output
as the generic export (``a``, ``a_lengths`` [, ``b``, ``b_lengths``] -> ``logits``).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.students.bilstm import BiLSTMStudent

# Rows of the gate table computed per matrix product at export (bounds the temporary memory).
TABLE_CHUNK_ROWS = 4096
# First opset whose ReduceMax takes its axes as an input instead of an attribute.
REDUCE_AXES_AS_INPUT_OPSET = 18


def _gate_order(hidden: int) -> np.ndarray:
    """Row permutation from PyTorch's gate order (input, forget, cell, output) to (input, forget, output, cell),
    so that one Split yields the three sigmoid gates together."""
    i, f, g, o = (np.arange(k * hidden, (k + 1) * hidden) for k in range(4))
    return np.concatenate([i, f, o, g])


@torch.inference_mode()
def gate_tables(model: BiLSTMStudent) -> tuple[np.ndarray, np.ndarray]:
    """Per direction, the LSTM's input gates (biases included) for every vocabulary entry: ``[vocab, 4 * hidden]``."""
    embedding = model.embedding.weight
    tables = []
    for lstm in (model.lstm.forward_lstm, model.lstm.backward_lstm):
        order = torch.from_numpy(_gate_order(lstm.hidden_size))
        weight, bias = lstm.weight_ih_l0[order], (lstm.bias_ih_l0 + lstm.bias_hh_l0)[order]
        table = torch.empty(embedding.shape[0], weight.shape[0])
        for start in range(0, embedding.shape[0], TABLE_CHUNK_ROWS):
            ids = torch.arange(start, min(start + TABLE_CHUNK_ROWS, embedding.shape[0]))
            inputs = model.embedding(ids)
            if model.frozen_embedding is not None:
                inputs = torch.cat([model.frozen_embedding(ids), inputs], dim=-1)
            table[ids] = inputs @ weight.T + bias
        tables.append(table.numpy())
    return tables[0], tables[1]


class _Graph:
    """Accumulates ONNX nodes and initialisers with unique names."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value: np.ndarray | list | float, dtype: type = np.int64) -> str:
        name = f"const_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str | list[str]:
        self._count += 1
        names = [f"{op_type.lower()}_{self._count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def dim(self, x: str, axis: int) -> str:
        """Size of ``x`` along ``axis`` as a 1-element int64 tensor."""
        return self.op("Shape", x, start=axis, end=axis + 1)

    def reduce_max(self, x: str, axis: int) -> str:
        if self.opset >= REDUCE_AXES_AS_INPUT_OPSET:
            return self.op("ReduceMax", x, self.const([axis]), keepdims=0)
        return self.op("ReduceMax", x, axes=[axis], keepdims=0)


def _scan_body(recurrent: np.ndarray, hidden: int) -> onnx.GraphProto:
    """One LSTM step for both directions: state ``[2, batch, hidden]``, gate inputs ``[2, batch, 4 * hidden]``."""

    def value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    nodes = [
        helper.make_node("MatMul", ["h_in", "recurrent"], ["h_gates"]),
        helper.make_node("Add", ["h_gates", "x_gates"], ["gates"]),
        helper.make_node("Split", ["gates", "split_sigmoid_tanh"], ["ifo_in", "cell_in"], axis=2),
        helper.make_node("Sigmoid", ["ifo_in"], ["ifo"]),
        helper.make_node("Split", ["ifo", "split_three"], ["input_gate", "forget_gate", "output_gate"], axis=2),
        helper.make_node("Tanh", ["cell_in"], ["candidate"]),
        helper.make_node("Mul", ["forget_gate", "c_in"], ["kept"]),
        helper.make_node("Mul", ["input_gate", "candidate"], ["written"]),
        helper.make_node("Add", ["kept", "written"], ["c_out"]),
        helper.make_node("Tanh", ["c_out"], ["c_squashed"]),
        helper.make_node("Mul", ["output_gate", "c_squashed"], ["h_out"]),
        helper.make_node("Identity", ["h_out"], ["y_out"]),
    ]
    initializers = [
        numpy_helper.from_array(recurrent, "recurrent"),
        numpy_helper.from_array(np.array([3 * hidden, hidden], dtype=np.int64), "split_sigmoid_tanh"),
        numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), "split_three"),
    ]
    state = [2, "batch", hidden]
    return helper.make_graph(
        nodes, "lstm_step",
        [value("h_in", state), value("c_in", state), value("x_gates", [2, "batch", 4 * hidden])],
        [value("h_out", state), value("c_out", state), value("y_out", state)],
        initializers,
    )  # fmt: skip


def _encode(g: _Graph, ids: str, lengths: str, tables: tuple[str, str], body: onnx.GraphProto, hidden: int,
            pooling: str) -> str:  # fmt: skip
    """Sentence vectors ``[batch, 2 * hidden]`` of padded ids ``[batch, time]``, as ``BiLSTMStudent.encode``."""
    time_len = g.op("Squeeze", g.dim(ids, 1), g.const([0]))
    positions = g.op("Range", g.const(0), time_len, g.const(1))  # [time]
    lengths_col = g.op("Unsqueeze", lengths, g.const([1]))  # [batch, 1]
    # Backward direction: each row reversed within its length (padding stays put), as layers.reverse_padded.
    reversed_pos = g.op("Sub", g.op("Sub", lengths_col, g.const(1)), positions)  # [batch, time]
    plain_pos = g.op("Expand", positions, g.op("Shape", reversed_pos))
    index = g.op("Where", g.op("GreaterOrEqual", reversed_pos, g.const(0)), reversed_pos, plain_pos)
    reversed_ids = g.op("GatherElements", ids, index, axis=1)
    forward_gates = g.op("Unsqueeze", g.op("Gather", tables[0], ids), g.const([0]))
    backward_gates = g.op("Unsqueeze", g.op("Gather", tables[1], reversed_ids), g.const([0]))
    gates = g.op("Transpose", g.op("Concat", forward_gates, backward_gates, axis=0), perm=[2, 0, 1, 3])
    state_shape = g.op("Concat", g.const([2]), g.dim(ids, 0), g.const([hidden]), axis=0)
    zeros = g.op("ConstantOfShape", state_shape, value=numpy_helper.from_array(np.zeros(1, np.float32)))
    # outputs: [time, 2, batch, hidden]
    _, _, outputs = g.op("Scan", zeros, zeros, gates, outputs=3, body=body, num_scan_inputs=1)
    if pooling == "last":
        per_row = g.op("Transpose", outputs, perm=[2, 1, 0, 3])  # [batch, 2, time, hidden]
        last = g.op("Reshape", g.op("Sub", lengths, g.const(1)), g.const([-1, 1, 1, 1]))
        last = g.op("Expand", last, g.op("Concat", g.dim(ids, 0), g.const([2, 1, hidden]), axis=0))
        final = g.op("GatherElements", per_row, last, axis=2)  # [batch, 2, 1, hidden]
        return g.op("Reshape", final, g.const([0, 2 * hidden]))
    # Max over real positions: the backward outputs are in reversed order, which a max does not see.
    real = g.op("Less", g.op("Unsqueeze", positions, g.const([1])), g.op("Unsqueeze", lengths, g.const([0])))
    real = g.op("Unsqueeze", real, g.const([1, 3]))  # [time, 1, batch, 1]
    masked = g.op("Where", real, outputs, g.const(-np.inf, np.float32))
    pooled = g.reduce_max(masked, 0)  # [2, batch, hidden]
    return g.op("Reshape", g.op("Transpose", pooled, perm=[1, 0, 2]), g.const([0, 2 * hidden]))


def _head(g: _Graph, features: str, head: nn.Module) -> str:
    """The task head (Linear / ReLU / Dropout layers) as Gemm and Relu nodes."""
    if not isinstance(head, nn.Sequential):
        raise NotImplementedError(f"gate-table export: the head must be an nn.Sequential, not {type(head).__name__}")
    x = features
    for layer in head:
        if isinstance(layer, nn.Linear):
            weight = g.const(layer.weight.detach().cpu().numpy(), np.float32)
            bias = g.const(layer.bias.detach().cpu().numpy(), np.float32)
            x = g.op("Gemm", x, weight, bias, transB=1)
        elif isinstance(layer, nn.ReLU):
            x = g.op("Relu", x)
        elif not isinstance(layer, nn.Dropout):
            raise NotImplementedError(f"gate-table export: unsupported head layer {type(layer).__name__}")
    return x


def gate_table_graph(model: BiLSTMStudent, task: str, opset: int) -> onnx.ModelProto:
    """The ONNX model of ``model``'s ``task`` head with precomputed input gates (inputs as the generic export)."""
    hidden = model.lstm.hidden_size
    order = _gate_order(hidden)
    recurrent = np.stack([
        lstm.weight_hh_l0.detach().cpu().numpy()[order].T
        for lstm in (model.lstm.forward_lstm, model.lstm.backward_lstm)
    ])  # fmt: skip
    g = _Graph(opset)
    forward_table, backward_table = gate_tables(model)
    tables = (g.const(forward_table, np.float32), g.const(backward_table, np.float32))
    body = _scan_body(recurrent.astype(np.float32), hidden)
    is_pair = model.tasks[task].is_pair
    names = ["a", "a_lengths", "b", "b_lengths"] if is_pair else ["a", "a_lengths"]
    if is_pair:
        width = g.op("Max", g.dim("a", 1), g.dim("b", 1))
        padded = [
            g.op("Pad", side, g.op("Concat", g.const([0, 0, 0]), g.op("Sub", width, g.dim(side, 1)), axis=0))
            for side in ("a", "b")
        ]
        ids = g.op("Concat", *padded, axis=0)
        lengths = g.op("Concat", "a_lengths", "b_lengths", axis=0)
        sentence = _encode(g, ids, lengths, tables, body, hidden, model.pooling)
        half = g.dim("a", 0)
        first = g.op("Slice", sentence, g.const([0]), half, g.const([0]))
        second = g.op("Slice", sentence, half, g.op("Mul", half, g.const([2])), g.const([0]))
        difference = g.op("Abs", g.op("Sub", first, second))
        features = g.op("Concat", first, second, g.op("Mul", first, second), difference, axis=1)
    else:
        features = _encode(g, "a", "a_lengths", tables, body, hidden, model.pooling)
    g.nodes.append(helper.make_node("Identity", [_head(g, features, model.heads[task])], ["logits"]))
    inputs = [
        helper.make_tensor_value_info(
            name, TensorProto.INT64, ["batch"] if name.endswith("_lengths") else ["batch", f"time_{name}"]
        )
        for name in names
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.tasks[task].num_outputs])]
    graph = helper.make_graph(g.nodes, f"bilstm_gate_table_{task}", inputs, outputs, g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="distillery")
    onnx.checker.check_model(onnx_model)
    return onnx_model
