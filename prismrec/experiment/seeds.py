"""One meaning of ``--seeds`` in every command (issue #15).

``--seeds`` is always a comma list of seeds (``999`` is the single seed 999, ``999,1000,7`` three
seeds); ``--n-seeds N`` means the first ``N`` protocol seeds ``999, 1000, 1001, ...``. A command
gets one of the two, or its own default count.
"""

from __future__ import annotations

from prismrec.errors import ConfigError

FIRST_PROTOCOL_SEED = 999
"""The protocol's seeds are 999, 1000, 1001, ... (MMRec's first seed, then consecutive)."""
MAX_SEEDS = 100
"""More seeds than this in one command is almost surely a typo (e.g. a seed written as a count)."""
MAX_SEED_VALUE = 2**32 - 1
"""NumPy's generators take seeds in 0..2**32-1 (the sampler and the models' noise generators)."""


def protocol_seeds(n: int) -> list[int]:
    """The first ``n`` protocol seeds: ``[999, 1000, ..., 999 + n - 1]``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise ConfigError(f"--n-seeds must be a whole number from 1 to {MAX_SEEDS}, got {n!r}")
    return [FIRST_PROTOCOL_SEED + i for i in range(n)]


def parse_seed_list(text: str) -> list[int]:
    """``"999,1000,7"`` -> ``[999, 1000, 7]``; anything else is a :class:`ConfigError`."""
    parts = [p.strip() for p in str(text).split(",")]
    seeds = []
    for part in parts:
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            raise ConfigError(
                f"--seeds {text!r}: {part!r} is not a whole number; give a comma list of seeds such as "
                "999,1000,1001, or --n-seeds 3 for the first three protocol seeds"
            ) from None
        if not 0 <= seed <= MAX_SEED_VALUE:
            raise ConfigError(f"--seeds {text!r}: seed {seed} is out of range; seeds are whole numbers "
                              f"from 0 to {MAX_SEED_VALUE}")
        seeds.append(seed)
    if not seeds:
        raise ConfigError(f"--seeds {text!r} holds no seed; give a comma list such as 999,1000, "
                          "or --n-seeds 3 for the first three protocol seeds")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text!r} repeats seed(s) {repeated}; each seed trains once")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"--seeds {text!r} lists {len(seeds)} seeds; at most {MAX_SEEDS} per command")
    return seeds


def resolve_seeds(seeds: str | None, n_seeds: int | None, default_n: int = 1) -> list[int]:
    """The seeds of a command from its ``--seeds`` (comma list) or ``--n-seeds`` (count) option.

    Neither given: the first ``default_n`` protocol seeds. Both given: a :class:`ConfigError`.
    """
    if seeds is not None and n_seeds is not None:
        raise ConfigError(f"give --seeds ({seeds}) or --n-seeds ({n_seeds}), not both: --seeds lists the "
                          "seeds, --n-seeds takes the first N protocol seeds 999, 1000, ...")
    if seeds is not None:
        return parse_seed_list(seeds)
    return protocol_seeds(default_n if n_seeds is None else n_seeds)
