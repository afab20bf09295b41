"""Array code shared by serving and training: numpy, SciPy and Pillow only.

- :mod:`service.imaging.preprocess`: the model contract's input and output
  (pad to square, crop, resize; the probability map back on the source matrix);
- :mod:`service.imaging.lesions`: the lesion rule (threshold, minimum area,
  one labelling) and the measurements.

Nothing here imports DICOM (``dicom_node``), the app, or ``model_export``;
``tests/unit/test_import_direction.py`` enforces it.
"""
