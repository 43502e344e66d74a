"""Tables of finished runs, the papers' numbers beside them: VTAB-1k groups, few-shot per shot, domain generalization.

python report.py RUN [RUN ...] [--out runs/report]
(the same command as ``glora-report``, installed by pip)
"""

from glora.app.commands.report import cli

if __name__ == "__main__":
    raise SystemExit(cli())
