"""Keras ``tf.function`` timing for ``mammoseg bench``, run as a child process.

The service never imports TensorFlow, so the bench starts
``python -m model_export.keras_timing REQUEST_JSON`` and reads one line
``BENCH-RESULT {...}`` from its output. The request names the weights, the
inputs (.npy), where to write the outputs (.npy), threads, batches, repeats.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    import tensorflow as tf

    from model_export.export import load_keras_model

    tf.config.threading.set_intra_op_parallelism_threads(request["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model, _ = load_keras_model(request["weights"])
    inputs = np.load(request["inputs"])
    result: dict[str, object] = {"tensorflow": tf.__version__}
    fn = tf.function(lambda t: model(t, training=False))
    for batch in request["batches"]:
        x = tf.constant(inputs[:batch])
        for _ in range(2):
            fn(x).numpy()
        times = []
        for _ in range(request["repeats"]):
            start = time.perf_counter()
            fn(x).numpy()
            times.append((time.perf_counter() - start) / batch)
        result[str(batch)] = [min(times), statistics.median(times), len(times)]
    outputs = [fn(inputs[i : i + 1]).numpy() for i in range(len(inputs))]
    np.save(request["outputs"], np.concatenate(outputs))
    print("BENCH-RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
