"""Runs an OIP JSON request through Python onnxruntime and prints the outputs as JSON.

    python ort_reference.py MODEL.onnx REQUEST.json
"""
import json
import sys

import numpy as np
import onnxruntime as ort

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}

model, request = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
req = json.load(open(request))
feeds = {
    i["name"]: np.array(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
    for i in req["inputs"]
}
names = [o.name for o in session.get_outputs()]
outs = session.run(names, feeds)
print(json.dumps({n: o.ravel().tolist() for n, o in zip(names, outs)}))
