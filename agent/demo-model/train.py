#!/usr/bin/env python3
"""Train and export Warden's demo model.

A gradient-boosting classifier on scikit-learn's bundled Wisconsin breast-cancer dataset
(569 real samples, 30 numeric features, benign/malignant), exported to ONNX with skl2onnx.
ZipMap is off so the outputs are plain tensors: `label` (INT64 [N]) and `probabilities`
(FP32 [N, 2]). The input `input` is FP32 [N, 30].

The script is deterministic (fixed seeds): re-running it reproduces the committed
`model/model.onnx` byte for byte with the same library versions.

    python3 agent/demo-model/train.py
"""

import json
import pathlib

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.model_selection import train_test_split
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=7, stratify=y
    )
    clf = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=7)
    clf.fit(x_train, y_train)
    accuracy = float(clf.score(x_test, y_test))

    onnx_model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.doc_string = (
        "Warden demo: gradient boosting on the scikit-learn breast-cancer dataset"
    )
    out = HERE / "model"
    out.mkdir(exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_model.SerializeToString())

    # Two held-out rows as a ready-made request; the demo prints a curl command with them.
    sample = {
        "inputs": [
            {
                "name": "input",
                "shape": [2, x.shape[1]],
                "datatype": "FP32",
                "data": [float(v) for v in x_test[:2].ravel()],
            }
        ]
    }
    (HERE / "sample-request.json").write_text(json.dumps(sample) + "\n")
    print(f"held-out accuracy {accuracy:.4f}; wrote {out / 'model.onnx'}")


if __name__ == "__main__":
    main()
