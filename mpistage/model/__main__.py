"""``python -m mpistage.model --nodes 1024 --size 10G ...``: the model's command line
(:mod:`mpistage.model.command`), kept out of the model itself so that the model does not
import its own command line (which imports the model: a circle)."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
