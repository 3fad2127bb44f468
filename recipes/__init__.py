"""The pipeline: the recipe schema (composed from the stages' own configs) and runner, recovery
(prune + finetune + evaluation), the shipped recipes, DeepSpeed configs.
"""
