"""Pruning: ranking (CUR/IG/subsets/Shapley), selection policies, surgery (the plan executor is models/executor.py), verification."""
