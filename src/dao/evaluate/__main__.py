"""``python -m dao.evaluate ...``: the ``dao evaluate`` command without the top-level CLI."""

from dao.cli.evaluate import evaluate_command

if __name__ == "__main__":
    evaluate_command(prog_name="dao evaluate")
