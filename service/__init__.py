"""mammoseg service: settings, job store, worker pipeline, ONNX inference, HTTP app, CLI."""

__version__ = "0.1.0"
