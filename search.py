"""Search a trained supernet for the best subnet under a parameter budget (deap). No arguments: the embedded default.

python search.py [--supernet runs/default/supernet/last.pt] [--param-limit 0.03] [--objective pareto] ...
"""

from glora.cli import run
from search.cli import main

if __name__ == "__main__":
    raise SystemExit(run(main))
