"""The load generator's PredictRequest/PredictResponse codec agrees with tensorflow_serving's real protos."""

import numpy as np
import pytest

from gateway.loadtest.grpc_wire import decode_output_int64, encode_predict_request


def test_request_parses_with_predict_pb2():
    from tensorflow_serving.apis import predict_pb2

    batch = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    req = predict_pb2.PredictRequest.FromString(encode_predict_request(batch))
    assert req.model_spec.name == "cnn"
    assert req.model_spec.signature_name == "serving_default"
    t = req.inputs["images"]
    assert t.dtype == 1 and [d.size for d in t.tensor_shape.dim] == [3, 28, 28, 1]
    np.testing.assert_array_equal(np.frombuffer(t.tensor_content, np.float32).reshape(3, 28, 28, 1), batch)


def test_response_classes_decode_both_encodings():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    resp = predict_pb2.PredictResponse()
    resp.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.full((2, 10), 0.1, np.float32)))
    resp.outputs["classes"].CopyFrom(tf.make_tensor_proto(np.array([7, 3], np.int64)))
    assert decode_output_int64(resp.SerializeToString()) == [7, 3]
    # int64_val instead of tensor_content, as other servers write it
    resp.outputs["classes"].Clear()
    resp.outputs["classes"].dtype = 9
    resp.outputs["classes"].int64_val.extend([1, 9, 0])
    assert decode_output_int64(resp.SerializeToString()) == [1, 9, 0]
    assert decode_output_int64(resp.SerializeToString(), "missing") is None
    # int32 classes (int_val), as a model exported with int32 outputs answers
    resp.outputs["classes"].Clear()
    resp.outputs["classes"].dtype = 3
    resp.outputs["classes"].int_val.extend([4, 2])
    assert decode_output_int64(resp.SerializeToString()) == [4, 2]
    # TF's compact form: one value for the whole shape
    resp.outputs["classes"].Clear()
    resp.outputs["classes"].dtype = 9
    resp.outputs["classes"].tensor_shape.dim.add().size = 3
    resp.outputs["classes"].int64_val.append(5)
    assert decode_output_int64(resp.SerializeToString()) == [5, 5, 5]
    resp.outputs["classes"].tensor_shape.dim[0].size = 1 << 40  # a broken shape is refused, not allocated
    with pytest.raises(ValueError, match="claims"):
        decode_output_int64(resp.SerializeToString())


def test_a_broken_or_foreign_answer_is_a_value_error():
    from tensorflow_serving.apis import predict_pb2

    with pytest.raises(ValueError, match="undecodable"):
        decode_output_int64(b"\x0a\xff\xff\xff\x0f")  # a field longer than the message
    resp = predict_pb2.PredictResponse()
    resp.outputs["classes"].dtype = 1  # float classes
    resp.outputs["classes"].float_val.append(1.0)
    with pytest.raises(ValueError, match="not int32 or int64"):
        decode_output_int64(resp.SerializeToString())
