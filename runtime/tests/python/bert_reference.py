"""A small BERT sequence classifier with random weights, written twice:

- as safetensors (HF `BertForSequenceClassification` tensor names, hyper-parameters in the
  `__metadata__` header) for Warden's candle engine, written by the `safetensors` package;
- as an ONNX graph built op by op with `onnx.helper` (Gather, Add, LayerNormalization, MatMul,
  Softmax, Erf-GELU, Tanh), run by ONNX Runtime: the independent reference.

Writes, into the directory given as the first argument: model.safetensors, model.onnx and
cases.json (input batches with padding, and the logits ONNX Runtime computed for them).

    python bert_reference.py OUT_DIR [--seed N] [--type-vocab N] [--layers N] [--hidden N]
                             [--max-positions N]
"""

import argparse
import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

# The additive value for a masked position, as transformers uses it (torch.finfo(float32).min).
MASKED = float(np.finfo(np.float32).min)


def make_weights(rng, cfg):
    h, i, v = cfg["hidden"], cfg["intermediate"], cfg["vocab"]

    def w(*shape, std=0.1):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ln(prefix, t):
        t[prefix + ".weight"] = (1.0 + rng.standard_normal(h) * 0.1).astype(np.float32)
        t[prefix + ".bias"] = w(h)

    t = {}
    t["bert.embeddings.word_embeddings.weight"] = w(v, h, std=0.5)
    t["bert.embeddings.position_embeddings.weight"] = w(cfg["max_positions"], h, std=0.5)
    t["bert.embeddings.token_type_embeddings.weight"] = w(cfg["type_vocab"], h, std=0.5)
    ln("bert.embeddings.LayerNorm", t)
    for n in range(cfg["layers"]):
        p = f"bert.encoder.layer.{n}."
        for name in ("query", "key", "value"):
            # Larger query/key weights make attention peaky, so masking errors show.
            std = 0.3 if name != "value" else 0.1
            t[p + f"attention.self.{name}.weight"] = w(h, h, std=std)
            t[p + f"attention.self.{name}.bias"] = w(h)
        t[p + "attention.output.dense.weight"] = w(h, h)
        t[p + "attention.output.dense.bias"] = w(h)
        ln(p + "attention.output.LayerNorm", t)
        t[p + "intermediate.dense.weight"] = w(i, h)
        t[p + "intermediate.dense.bias"] = w(i)
        t[p + "output.dense.weight"] = w(h, i)
        t[p + "output.dense.bias"] = w(h)
        ln(p + "output.LayerNorm", t)
    t["bert.pooler.dense.weight"] = w(h, h, std=0.3)
    t["bert.pooler.dense.bias"] = w(h)
    t["classifier.weight"] = w(cfg["labels"], h, std=0.5)
    t["classifier.bias"] = w(cfg["labels"])
    return t


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint="c"):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x, weights, prefix):
        # HF stores [out, in]; MatMul wants [in, out].
        w = self.const(weights[prefix + ".weight"].T.copy(), prefix + ".w")
        b = self.const(weights[prefix + ".bias"], prefix + ".b")
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def layer_norm(self, x, weights, prefix, eps):
        g = self.const(weights[prefix + ".weight"], prefix + ".g")
        b = self.const(weights[prefix + ".bias"], prefix + ".b")
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)


def build_onnx(weights, cfg):
    g = Graph()
    h, heads, eps = cfg["hidden"], cfg["heads"], cfg["eps"]
    d = h // heads
    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"

    word = g.op("Gather", [g.const(weights["bert.embeddings.word_embeddings.weight"]), ids])
    seq = g.op("Gather", [g.op("Shape", [ids]), g.const(np.int64(1))])
    positions = g.op("Range", [g.const(np.int64(0)), seq, g.const(np.int64(1))])
    pos = g.op("Gather", [g.const(weights["bert.embeddings.position_embeddings.weight"]), positions])
    if cfg["type_vocab"] > 1:
        type_ids = types
    else:
        type_ids = g.op("Mul", [ids, g.const(np.int64(0))])
    typ = g.op("Gather", [g.const(weights["bert.embeddings.token_type_embeddings.weight"]), type_ids])
    x = g.op("Add", [g.op("Add", [word, pos]), typ])
    x = g.layer_norm(x, weights, "bert.embeddings.LayerNorm", eps)

    m = g.op("Cast", [mask], to=TensorProto.FLOAT)
    m = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), m]), g.const(np.float32(MASKED))])
    m = g.op("Unsqueeze", [m, g.const(np.array([1, 2], dtype=np.int64))])  # [B, 1, 1, S]

    split = g.const(np.array([0, 0, heads, d], dtype=np.int64))
    merge = g.const(np.array([0, 0, h], dtype=np.int64))
    scale = g.const(np.float32(1.0 / math.sqrt(d)))
    for n in range(cfg["layers"]):
        p = f"bert.encoder.layer.{n}."

        def heads_of(name, perm):
            y = g.linear(x, weights, p + f"attention.self.{name}")
            return g.op("Transpose", [g.op("Reshape", [y, split])], perm=perm)

        q = heads_of("query", [0, 2, 1, 3])  # [B, H, S, D]
        k = heads_of("key", [0, 2, 3, 1])  # [B, H, D, S]
        v = heads_of("value", [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), m])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge])
        a = g.linear(ctx, weights, p + "attention.output.dense")
        x = g.layer_norm(g.op("Add", [a, x]), weights, p + "attention.output.LayerNorm", eps)
        i = g.linear(x, weights, p + "intermediate.dense")
        erf = g.op("Erf", [g.op("Div", [i, g.const(np.float32(math.sqrt(2.0)))])])
        gelu = g.op("Mul", [g.op("Mul", [i, g.op("Add", [erf, g.const(np.float32(1.0))])]),
                            g.const(np.float32(0.5))])
        o = g.linear(gelu, weights, p + "output.dense")
        x = g.layer_norm(g.op("Add", [o, x]), weights, p + "output.LayerNorm", eps)

    cls = g.op("Gather", [x, g.const(np.int64(0))], axis=1)  # [B, H]
    pooled = g.op("Tanh", [g.linear(cls, weights, "bert.pooler.dense")])
    logits = g.linear(pooled, weights, "classifier")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))

    int_input = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
    inputs = [int_input(ids), int_input(mask)]
    if cfg["type_vocab"] > 1:
        inputs.append(int_input(types))
    graph = helper.make_graph(
        g.nodes, "bert_classifier", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg["labels"]])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_cases(rng, cfg):
    """Batches with padding: (batch, seq, lengths per row)."""
    shapes = [(1, 8, [8]), (3, 12, [12, 5, 1]), (5, 32, [32, 7, 19, 2, 30]), (2, cfg["max_positions"], [cfg["max_positions"], 40]),
              (8, 16, [16, 3, 9, 16, 1, 12, 8, 5])]
    cases = []
    for batch, seq, lengths in shapes:
        ids = rng.integers(0, cfg["vocab"], size=(batch, seq), dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        types = np.zeros((batch, seq), dtype=np.int64)
        for r, n in enumerate(lengths):
            mask[r, :n] = 1
            if cfg["type_vocab"] > 1:
                types[r, n // 2:n] = 1  # a second segment, as for sentence pairs
        cases.append({"ids": ids, "mask": mask, "types": types})
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--type-vocab", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--max-positions", type=int, default=64)
    args = ap.parse_args()
    cfg = {"vocab": 1000, "hidden": args.hidden, "layers": args.layers, "heads": 4,
           "intermediate": 4 * args.hidden, "max_positions": args.max_positions, "type_vocab": args.type_vocab,
           "labels": 3, "eps": 1e-12}
    rng = np.random.default_rng(args.seed)
    weights = make_weights(rng, cfg)
    os.makedirs(args.out, exist_ok=True)
    save_file(weights, os.path.join(args.out, "model.safetensors"), metadata={
        "format": "pt",
        "architecture": "BertForSequenceClassification",
        "num_attention_heads": str(cfg["heads"]),
        "layer_norm_eps": repr(cfg["eps"]),
        "hidden_act": "gelu",
    })
    model = build_onnx(weights, cfg)
    onnx_path = os.path.join(args.out, "model.onnx")
    onnx.save(model, onnx_path)

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = []
    for case in make_cases(rng, cfg):
        feed = {"input_ids": case["ids"], "attention_mask": case["mask"]}
        if cfg["type_vocab"] > 1:
            feed["token_type_ids"] = case["types"]
        (logits,) = session.run(["logits"], feed)
        out.append({
            "shape": list(case["ids"].shape),
            "input_ids": case["ids"].reshape(-1).tolist(),
            "attention_mask": case["mask"].reshape(-1).tolist(),
            "token_type_ids": case["types"].reshape(-1).tolist(),
            "logits": [float(v) for v in logits.reshape(-1)],
        })
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"config": cfg, "cases": out}, f)


if __name__ == "__main__":
    main()
