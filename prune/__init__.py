"""Pruning: ranking (CUR/IG/subsets/Shapley), selection policies, removal plans, surgery, verification."""
