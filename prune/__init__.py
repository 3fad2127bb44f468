"""Pruning: ranking (CUR/IG/subsets/Shapley), selection policies, surgery and verification.

The plan executor both prune and export use is :mod:`encslim.models.executor`.
"""
