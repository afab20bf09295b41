"""``mammoseg bench``: one command, one table, every figure a ratio taken in one run.

Sections (``--sections``, all by default):

- ``model``: ONNX Runtime fp32 per 256x256 image (batch 1 and 4) against the
  FLOP bound; Keras ``tf.function`` on the same weights; INT8 against fp32
  (latency and mask Dice). See :mod:`service.bench.model`.
- ``latency``: full-size 16-bit MG images, one at a time, DCMTK storescu ->
  node -> DCMTK storescp; p50/p95 per stage. Also the node's idle RSS.
- ``throughput``: many images over concurrent associations, images per
  minute; the node's peak RSS; TensorFlow never in its memory map.
- ``growth``: end to end p50 at several image sizes against the pixel count.
- ``receive``: the node's SCP (store only) against DCMTK storescp, per round.
- ``profile``: py-spy samples of the node at work (skipped without py-spy).
  The node parts are in :mod:`service.bench.node`.

The node's time figures are also given in model-times (ONNX Runtime fp32, batch 1,
per image, best, measured in the same run: :func:`service.bench.run.model_time`), the
unit of the targets. The machine these run on is usually shared, so nothing here is a timed
assertion: each target is reported as met or missed with the measured figure,
and the date, machine and load average are printed with the table.

Modules: :mod:`~service.bench.options` (the flags), :mod:`~service.bench.report`
(tables, Markdown), :mod:`~service.bench.run` (the sections, ``main``),
:mod:`~service.bench.model` and :mod:`~service.bench.node`. The images and the
node launcher are :mod:`service.testkit`'s, shared with the tests.

Nothing in production imports this package: ``service.cli`` imports
:mod:`service.bench.run` only once ``mammoseg bench`` is the command
(tests/unit/test_bench_isolation.py).
"""
