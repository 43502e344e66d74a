"""Search a trained supernet for the best subnet under a parameter budget (deap). No arguments: the embedded default.

python search.py [--supernet runs/default/supernet/last.pt] [--param-limit 0.03] [--objective pareto] ...
(the same command as ``glora-search``, installed by pip)
"""

from glora.app.commands.search import cli

if __name__ == "__main__":
    raise SystemExit(cli())
