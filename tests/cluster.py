"""The integration tests' cluster: zring.localcluster under the names the tests use.

``TestCluster`` is :class:`zring.localcluster.LocalCluster` (node processes under a private
supervisord, faults through tools/chaos.py); this module only keeps the tests' imports
(``from cluster import TestCluster, wait_for``) working and tells pytest it is no test class.
"""

from __future__ import annotations

from zring.localcluster import CHAOS, ROOT, LocalCluster, LocalClusterError, free_ports, wait_for

__all__ = ["CHAOS", "ROOT", "LocalClusterError", "TestCluster", "free_ports", "wait_for"]


class TestCluster(LocalCluster):
    __test__ = False  # not a pytest class, despite the name
