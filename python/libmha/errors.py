"""errors: one exception class per libmha status, all under libmha.Error.

A failed C call raises the class of its status, carrying the message the
context kept (mha_context_errmsg), so Python shows what C callers see:
``ShapeMismatchError: mha_layer_forward_host: query has shape [4,2,6];
expected ...``. Each class also derives from the closest built-in exception
(ValueError for shapes, MemoryError for memory, ...) so generic handlers
keep working.
"""
from . import _capi


class Error(Exception):
    """Base of every libmha error.

    Attributes: ``status`` (the mha_status number), ``status_name``
    (``"MHA_SHAPE_MISMATCH"``) and ``message`` (libmha's message, or the
    fixed text of the status when the call left none)."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message

    @property
    def status_name(self):
        """The C name of the status, e.g. ``"MHA_BAD_STATE"``."""
        if self.status is None:
            return None
        return "MHA_" + _capi.STATUS_NAMES[self.status]


def _make(name, status, bases, doc):
    return type(name, (Error,) + bases, {"status": status, "__doc__": doc})


InvalidArgumentError = _make("InvalidArgumentError", 1, (ValueError,),
                             "MHA_INVALID_ARGUMENT: an invalid argument.")
ShapeMismatchError = _make("ShapeMismatchError", 2, (ValueError,),
                           "MHA_SHAPE_MISMATCH: a tensor's shape does not "
                           "match the layer or the other arguments.")
DtypeMismatchError = _make("DtypeMismatchError", 3, (TypeError,),
                           "MHA_DTYPE_MISMATCH: a tensor's dtype does not "
                           "match.")
OutOfMemoryError = _make("OutOfMemoryError", 4, (MemoryError,),
                         "MHA_OUT_OF_MEMORY: host or device memory ran out.")
SizeOverflowError = _make("SizeOverflowError", 5, (OverflowError,),
                          "MHA_OVERFLOW: a size overflows.")
NotFoundError = _make("NotFoundError", 6, (LookupError,),
                      "MHA_NOT_FOUND: a named thing (a weight, a key) does "
                      "not exist.")
UnsupportedError = _make("UnsupportedError", 7, (NotImplementedError,),
                         "MHA_UNSUPPORTED: the device or libmha does not "
                         "support this (also raised for autograd, which "
                         "libmha does not do).")
MissingWeightError = _make("MissingWeightError", 8, (),
                           "MHA_MISSING_WEIGHT: a weight the layer needs "
                           "was not set.")
InputOutputError = _make("InputOutputError", 9, (OSError,),
                         "MHA_IO: a file could not be read.")
CorruptFileError = _make("CorruptFileError", 10, (ValueError,),
                         "MHA_CORRUPT_FILE: a file is corrupt or not in the "
                         "expected format.")
NoDeviceError = _make("NoDeviceError", 11, (LookupError,),
                      "MHA_NO_DEVICE: no device matches the spec.")
DeviceError = _make("DeviceError", 12, (),
                    "MHA_DEVICE_ERROR: the device or its driver failed.")
DeviceLostError = _make("DeviceLostError", 13, (),
                        "MHA_DEVICE_LOST: the device was lost.")
BufferTooSmallError = _make("BufferTooSmallError", 14, (ValueError,),
                            "MHA_BUFFER_TOO_SMALL: an output buffer is too "
                            "small.")
LimitReachedError = _make("LimitReachedError", 15, (),
                          "MHA_LIMIT_REACHED: a fixed limit of libmha was "
                          "reached.")
BadStateError = _make("BadStateError", 16, (),
                      "MHA_BAD_STATE: the object does not allow this call "
                      "now (for example: it was closed).")
LibraryNotFoundError = _make("LibraryNotFoundError", None, (ImportError,),
                             "The libmha shared library could not be "
                             "loaded (see libmha.library_path).")

_BY_STATUS = {cls.status: cls for cls in (
    InvalidArgumentError, ShapeMismatchError, DtypeMismatchError,
    OutOfMemoryError, SizeOverflowError, NotFoundError, UnsupportedError,
    MissingWeightError, InputOutputError, CorruptFileError, NoDeviceError,
    DeviceError, DeviceLostError, BufferTooSmallError, LimitReachedError,
    BadStateError)}
assert len(_BY_STATUS) == len(_capi.STATUS_NAMES) - 1


def error_for(status, message):
    """The exception for a failed call: its status's class and message."""
    cls = _BY_STATUS.get(status, Error)
    return cls(message, status)
