"""Weights shipped with genmnist: ``<dataset>/<model>/{config.json,model.safetensors}``.

Made with the recipes in the repository's ``recipes/`` folder; see the model cards in the
documentation.
"""
