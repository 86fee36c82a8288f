"""`python -m train [--flags | config.json]`: see train/pipeline.py and README."""

import sys

if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
    from train.arguments import argument_parser  # light: `--help` needs no Trainer, datasets or plotting

    argument_parser().print_help()
    sys.exit(0)

from train.pipeline import main  # noqa: E402

sys.exit(main())
