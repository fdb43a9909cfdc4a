"""`python -m serving`: the model server (serving/cli.py has the command line)."""

from serving.cli import main

if __name__ == "__main__":
    main()
