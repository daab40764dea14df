"""Everything a search needs to continue where it stopped, as one JSON checkpoint written atomically.

The random generator's state, the population, the fitness and equivalence caches, the hall of fame, the
history and the counters all go in: a run killed at any moment and resumed replays exactly the iterations an
uninterrupted run would have done, because every random draw comes from the one restored generator and
every cache hit is the same hit. JSON rather than pickle so a checkpoint can be read (and trusted) by a person.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.search.evaluate import Outcome
from proxylab.search.genome import Genome
from proxylab.utils import atomic_write_text

CHECKPOINT = "checkpoint.json"
FORMAT_VERSION = 1
COUNTERS = ("candidates", "evaluations", "cache_hits", "equivalent_hits", "duplicates")


@dataclass
class Individual:
    genome: Genome
    formula: str
    key: str
    fitness: float
    per_table: tuple = ()
    probe_key: str = ""

    @property
    def identity(self) -> str:
        """Behaviour when known (functional-equivalence key), else the canonical formula hash."""
        return self.probe_key or self.key

    def to_json(self) -> list:
        return [self.genome.to_json(), self.formula, self.key, self.fitness, list(self.per_table), self.probe_key]

    @classmethod
    def from_json(cls, d: list) -> "Individual":
        return cls(Genome.from_json(d[0]), d[1], d[2], float(d[3]), tuple(d[4]), d[5])


@dataclass
class SearchState:
    rng: np.random.Generator
    iteration: int = -1                      # -1: initial population not complete; 0: initialised
    population: List[Individual] = field(default_factory=list)
    cache: Dict[str, Outcome] = field(default_factory=dict)       # canonical hash -> outcome
    equivalent: Dict[str, Outcome] = field(default_factory=dict)  # probe key -> outcome
    hall: Dict[str, Dict[str, Any]] = field(default_factory=dict) # canonical hash -> record
    history: List[Dict[str, Any]] = field(default_factory=list)
    counters: Dict[str, int] = field(default_factory=lambda: {k: 0 for k in COUNTERS})
    rejections: Dict[str, Dict[str, int]] = field(default_factory=lambda: {"early": {}, "full": {}})
    init_samples: int = 0

    def reject(self, stage: str, reason: str) -> None:
        bucket = self.rejections[stage]
        bucket[reason] = bucket.get(reason, 0) + 1

    def rejected_total(self, stage: str) -> int:
        return sum(self.rejections[stage].values())

    def rejection_summary(self) -> Dict[str, Any]:
        early, full = self.rejected_total("early"), self.rejected_total("full")
        total = early + full
        return {"early": dict(self.rejections["early"]), "full": dict(self.rejections["full"]),
                "total": total, "early_share": early / total if total else math.nan}

    # -- persistence ------------------------------------------------------------------------------------
    def to_json(self, fingerprint: str) -> Dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "iteration": self.iteration,
            "rng": self.rng.bit_generator.state,
            "population": [ind.to_json() for ind in self.population],
            "cache": {k: v.to_json() for k, v in self.cache.items()},
            "equivalent": {k: v.to_json() for k, v in self.equivalent.items()},
            "hall": self.hall,
            "history": self.history,
            "counters": self.counters,
            "rejections": self.rejections,
            "init_samples": self.init_samples,
        }

    def save(self, folder: Path, fingerprint: str) -> None:
        atomic_write_text(Path(folder) / CHECKPOINT, json.dumps(self.to_json(fingerprint)))

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> Optional["SearchState"]:
        path = Path(folder) / CHECKPOINT
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ProxylabError(f"checkpoint {path} is not valid JSON ({e}); it was not written by this "
                                f"version of proxylab's atomic writer: start a new run with another --out") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ProxylabError(f"checkpoint {path} has format version {data.get('format_version')}, this "
                                f"proxylab writes {FORMAT_VERSION}: start a new run with another --out")
        if data.get("fingerprint") != fingerprint:
            raise ProxylabError(f"checkpoint {path} belongs to a different configuration than config.yaml "
                                f"describes: start a new run with another --out")
        rng = np.random.default_rng()
        rng.bit_generator.state = data["rng"]
        return cls(
            rng=rng,
            iteration=int(data["iteration"]),
            population=[Individual.from_json(d) for d in data["population"]],
            cache={k: Outcome.from_json(v) for k, v in data["cache"].items()},
            equivalent={k: Outcome.from_json(v) for k, v in data["equivalent"].items()},
            hall=data["hall"],
            history=data["history"],
            counters={k: int(data["counters"].get(k, 0)) for k in COUNTERS},
            rejections={s: {r: int(n) for r, n in data["rejections"].get(s, {}).items()} for s in ("early", "full")},
            init_samples=int(data.get("init_samples", 0)),
        )
