"""Drives a Warden server with the official Triton/KServe v2 HTTP client over mutual TLS and
checks its answers against Python onnxruntime on the same input.

    python triton_client.py HOST:PORT CA CLIENT_CERT CLIENT_KEY MODEL.onnx REQUEST.json

Exits non-zero with a message on the first mismatch.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

url, ca, cert, key, model_path, request_path = sys.argv[1:7]

client = httpclient.InferenceServerClient(
    url=url,
    ssl=True,
    ssl_options={"ca_certs": ca, "certfile": cert, "keyfile": key},
)
assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
meta = client.get_server_metadata()
assert meta["name"] == "warden", meta
assert "binary_tensor_data" in meta["extensions"], meta
assert client.is_model_ready("demo"), "model not ready"
assert client.is_model_ready("demo", "1"), "model version not ready"

mm = client.get_model_metadata("demo")
assert mm["name"] == "demo" and mm["versions"] == ["1"], mm
assert mm["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}], mm["inputs"]
outs = {o["name"]: o for o in mm["outputs"]}
assert outs["label"]["datatype"] == "INT64" and outs["label"]["shape"] == [-1], outs
assert outs["probabilities"]["datatype"] == "FP32" and outs["probabilities"]["shape"] == [-1, 2], outs

req = json.load(open(request_path))
x = np.array(req["inputs"][0]["data"], dtype=np.float32).reshape(req["inputs"][0]["shape"])
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
want_label, want_probs = session.run(["label", "probabilities"], {"input": x})

for binary in (True, False):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("demo", [inp], model_version="1", outputs=outputs, request_id="triton-1")
    got_label = result.as_numpy("label")
    got_probs = result.as_numpy("probabilities")
    assert got_label.dtype == np.int64 and got_label.shape == want_label.shape, (got_label.dtype, got_label.shape)
    assert np.array_equal(got_label, want_label), (got_label, want_label)
    assert got_probs.shape == want_probs.shape, got_probs.shape
    assert np.allclose(got_probs, want_probs, atol=1e-5, rtol=0), (got_probs, want_probs)
    assert result.get_response()["id"] == "triton-1", result.get_response()

# No outputs named: the client asks for every output in binary.
inp = httpclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer("demo", [inp])
assert np.allclose(result.as_numpy("probabilities"), want_probs, atol=1e-5, rtol=0)

# A wrong shape is refused by the server with the protocol's error shape.
bad = httpclient.InferInput("input", [1, 29], "FP32")
bad.set_data_from_numpy(np.zeros((1, 29), dtype=np.float32))
try:
    client.infer("demo", [bad])
except httpclient.InferenceServerException as e:
    assert "shape" in str(e), str(e)
else:
    raise AssertionError("a [1,29] input was accepted")

print("tritonclient: all checks passed")
