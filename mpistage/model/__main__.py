"""``python -m mpistage.model --nodes 1024 --size 10G ...``: the model's command line
(:mod:`mpistage.model_cli`), kept out of the model itself so that the model imports
nothing above it."""

from ..model_cli import main

raise SystemExit(main())
