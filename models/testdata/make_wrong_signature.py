"""Writes wrong_signature.onnx: a valid ONNX model whose input is float32[N, 20] (one feature
short), for the test that the classifier refuses a model it cannot serve.

    .venv/bin/python models/testdata/make_wrong_signature.py
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 20])
y = helper.make_tensor_value_info("PredictedRul", TensorProto.FLOAT, ["N", 1])
w = helper.make_tensor("w", TensorProto.FLOAT, [20, 1], [0.5] * 20)
graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["PredictedRul"])], "wrong", [x], [y], [w])
model = helper.make_model(graph, producer_name="make_wrong_signature", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
out = Path(__file__).with_name("wrong_signature.onnx")
onnx.save(model, out)
print(out)
