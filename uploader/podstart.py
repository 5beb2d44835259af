"""Imported first by `voicevault uploader` (batch_command): the pod's cheap start
(`quickstart`). Any other process importing the uploader's modules is left as it is."""

from voicevault.uploader import quickstart

quickstart.begin()
