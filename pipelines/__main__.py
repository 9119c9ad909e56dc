import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from pipelines.cli import main  # noqa: E402

sys.exit(main())
