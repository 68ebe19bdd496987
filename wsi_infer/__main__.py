"""``python -m wsi_infer`` is the ``wsi-infer`` command."""

from wsi_infer.cli import main

main()
