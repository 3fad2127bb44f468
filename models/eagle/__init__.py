"""The Eagle v1 family (X2/X4/X5, NVlabs/EAGLE) in its original checkpoint layout."""
