"""The FLOP counter of bench/inference.py: a tiny graph counted by hand, and the lung U-Net's
cost per 512 x 512 slice in the range the field notes give (about 19 GFLOP)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.inference import UNET, FlopCounter, network_input_shapes
from node.inference.segment import Plan


def _tiny_graph() -> onnx.ModelProto:
    """Conv 3x3 1 -> 4 channels (padded, with bias), then ConvTranspose 2x2 stride 2,
    4 -> 2 channels (no bias)."""
    conv_w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "conv_w")
    conv_b = numpy_helper.from_array(np.zeros(4, np.float32), "conv_b")
    up_w = numpy_helper.from_array(np.ones((4, 2, 2, 2), np.float32), "up_w")
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["h", "up_w"], ["y"], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, None, None])],
        initializer=[conv_w, conv_b, up_w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_tiny_graph_is_counted_as_by_hand() -> None:
    # Given a (2, 1, 8, 6) input: the Conv makes (2, 4, 8, 6), the ConvTranspose (2, 2, 16, 12)
    counter = FlopCounter(_tiny_graph())
    conv_out = 2 * 4 * 8 * 6
    conv = 2 * conv_out * 1 * 9 + conv_out  # multiply-adds over 1 input channel, plus bias
    # Each of the ConvTranspose's 384 input elements meets a 2 x 2 kernel per output channel;
    # seen from the output: each of its 768 elements gets one tap from each of 4 channels.
    up_in = 2 * 4 * 8 * 6
    up = 2 * up_in * 2 * 4
    assert up == 2 * (2 * 2 * 16 * 12) * 4
    # When counted, then the counts agree, and scale with the batch
    assert counter((2, 1, 8, 6)) == conv + up == 13440
    assert counter((4, 1, 8, 6)) == 2 * counter((2, 1, 8, 6))


def test_unet_costs_about_19_gflop_per_slice() -> None:
    gflop = FlopCounter(UNET)((1, 1, 512, 512)) / 1e9
    assert 15 < gflop < 25


def test_planned_shapes_follow_the_boxes_and_the_resampling() -> None:
    plan = Plan((((0, 1, 2, 3), (8, 264, 16, 400)), ((4,), (0, 512, 0, 512))))
    assert network_input_shapes(plan, 512, 512) == [(4, 1, 256, 384), (1, 1, 512, 512)]
    # A 256-row series is resampled to 512 (x2) and padded to a multiple of 8.
    small = Plan((((0, 1), (0, 101, 0, 256)),))
    assert network_input_shapes(small, 256, 512) == [(2, 1, 208, 512)]
