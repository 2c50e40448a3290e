"""`python -m eval.scaling ...`: run the command line of `eval.scaling.cli`."""

from eval.scaling.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
