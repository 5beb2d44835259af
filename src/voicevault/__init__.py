"""voicevault: store call recordings, encrypted, in the customer's own S3 bucket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voicevault")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"

API_GROUP = "voicevault.io"
API_VERSION = "v1alpha1"
