"""The kit that ``tests/`` and ``mammoseg bench`` share; production code never imports it.

- :mod:`service.testkit.synthetic`: synthetic digital mammograms (the one generator),
  single images for tests and batches of files for the bench.
- :mod:`service.testkit.processes`: free loopback ports, waiting for a listener,
  stopping a child process.
- :mod:`service.testkit.launch`: ``mammoseg serve`` as a child process, ready when returned
  (the one launcher).

It lives inside ``service`` so that the bench, which ships with the wheel, can import it;
the import rule (the node, the workers, the API and ``dicom_node`` import neither this
package, ``service.bench`` nor ``tests``) is checked by tests/unit/test_bench_isolation.py.
"""
