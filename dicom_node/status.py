"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 for C-STORE)."""

from enum import IntEnum


class Status(IntEnum):
    """The statuses the node sends or interprets; never use bare hex elsewhere."""

    SUCCESS = 0x0000
    # C-STORE failures (PS3.4 Table B.2-1)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # General statuses (PS3.7 C.4)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    PROCESSING_FAILURE = 0x0110
    # Warnings (PS3.4 Table B.2-1)
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006

    @property
    def is_success(self) -> bool:
        return self == Status.SUCCESS

    @classmethod
    def is_acknowledged(cls, value: int) -> bool:
        """Success or warning: the peer has stored the instance (PS3.7 C.1.2)."""
        return value == cls.SUCCESS or (value & 0xF000) == 0xB000 or value in (0x0107, 0x0116)
