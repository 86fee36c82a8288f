"""`python -m train [--flags | config.json]`: see train/pipeline.py and README."""

import sys

from train.pipeline import main

sys.exit(main())
