"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 for C-STORE)."""

from enum import IntEnum


class Status(IntEnum):
    """The statuses the node sends or interprets; never use bare hex elsewhere."""

    SUCCESS = 0x0000
    # C-STORE failures (PS3.4 Table B.2-1)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # STOW-RS Failure Reason (PS3.18 Store Instances Response): transfer syntax refused
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
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


#: What a status means, for failure reasons: exact codes first (PS3.7 C.4, PS3.4 B.2-1).
_MEANINGS = {
    0x0000: "success",
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0107: "attribute list error",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such SOP instance",
    0x0116: "attribute value out of range",
    0x0117: "invalid object instance",
    0x0118: "no such SOP class",
    0x0119: "class-instance conflict",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class (warning)",
}
#: C-STORE's ranges (PS3.4 Table B.2-1): the high byte (or nibble) names the failure.
_RANGES = (
    (0xFF00, 0xA700, "out of resources"),
    (0xFF00, 0xA900, "data set does not match SOP class"),
    (0xF000, 0xC000, "cannot understand"),
)


def describe(code: int) -> str:
    """``0xA700 out of resources``: the code and its meaning (``0x1234`` alone if unknown)."""
    meaning = _MEANINGS.get(code) or next(
        (text for mask, value, text in _RANGES if code & mask == value), ""
    )
    return f"0x{code:04X} {meaning}".rstrip()
