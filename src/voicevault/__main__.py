"""`python -m voicevault` runs the same command-line interface as `voicevault`."""

from voicevault.cli import main

raise SystemExit(main())
