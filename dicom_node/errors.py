"""The root exception of the DICOM package."""


class DicomNodeError(Exception):
    """Anything dicom_node refuses: bad datasets, undecodable pixels, failed sends."""
