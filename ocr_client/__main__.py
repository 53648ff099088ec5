"""`python -m ocr_client`: the command line (see ocr_client.cli)."""

from ocr_client.cli import main

raise SystemExit(main())
