"""Recipes: the YAML schema and runner, the shipped recipes, DeepSpeed configs."""
