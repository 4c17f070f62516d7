"""What a service of the node (map channels, shared poll channels) reads from the node that owns it: its
configuration, policy and metrics. The services sit below the node (node.py builds them) and name it only
through protocols built on this one; ``node.Node`` fits them by its shape."""

from __future__ import annotations

from typing import Protocol, TypeVar

from node.config import Config
from node.metrics import Metrics

P_co = TypeVar("P_co", covariant=True)  # the service's view of the policy (node.policy.Policy fits it)


class ServiceHost(Protocol[P_co]):
    config: Config
    metrics: Metrics

    @property
    def policy(self) -> P_co: ...  # read-only here, so that the node's Policy fits each service's narrower view
