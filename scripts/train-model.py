"""Trains the digits classifier shipped in agents/models/ and exports it to ONNX.

Data: scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16), split 75/25 with a
fixed seed, stratified by class. Model: standard scaling then a 64-32-10 multilayer perceptron.
Writes, into the output directory:
  digits.onnx       input `pixels` float32 [N, 64]; outputs `label` int64 [N] and
                    `probabilities` float32 [N, 10] (no ZipMap, so both are plain tensors)
  digits-test.json  the held-out images, their true labels, and the ONNX Runtime predictions
Prints the test accuracy of scikit-learn and of ONNX Runtime on the exported model; they must
agree, or the export changed the model.

Run it through scripts/train-model.sh, which makes the pinned environment.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

SEED = 20240601


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )

    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=(32,),
                    alpha=1e-3,
                    max_iter=400,
                    random_state=SEED,
                ),
            ),
        ]
    )
    model.fit(x_train, y_train)
    sklearn_accuracy = float((model.predict(x_test) == y_test).mean())

    onnx_model = to_onnx(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={"mlp": {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model_path = out_dir / "digits.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())

    session = onnxruntime.InferenceSession(
        str(model_path), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {"pixels": x_test})
    onnx_accuracy = float((labels == y_test).mean())
    assert probabilities.shape == (len(x_test), 10), probabilities.shape

    test = {
        "description": "held-out digits for agents/models/digits.onnx; see README.md",
        "seed": SEED,
        "accuracy": onnx_accuracy,
        "features": x_test.astype(int).tolist(),
        "labels": y_test.tolist(),
        "predictions": labels.tolist(),
    }
    (out_dir / "digits-test.json").write_text(json.dumps(test, separators=(",", ":")) + "\n")

    print(f"train {len(x_train)} / test {len(x_test)} images")
    print(f"model {model_path} ({model_path.stat().st_size} bytes)")
    print(f"test accuracy scikit-learn:  {sklearn_accuracy:.6f}")
    print(f"test accuracy ONNX Runtime:  {onnx_accuracy:.6f}")
    if abs(sklearn_accuracy - onnx_accuracy) > 1e-9:
        sys.exit("the exported model disagrees with scikit-learn")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "agents/models"))
