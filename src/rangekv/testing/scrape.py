"""Reading a Prometheus text exposition in tests and by hand: every sample by name and labels.

``parse`` uses prometheus_client's own parser, so a malformed exposition fails loudly here.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """{(sample name, frozenset of (label, value)): value} of an exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"sample {key} twice in one exposition"
            out[key] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 if the exposition does not have it: a counter not yet counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """GET ``url`` (a /metrics address) and parse it."""
    resp = httpx.get(url, timeout=timeout_s)
    resp.raise_for_status()
    return parse(resp.text)
