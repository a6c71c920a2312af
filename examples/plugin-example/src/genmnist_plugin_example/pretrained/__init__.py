"""Shipped weights, as ``<dataset>/<model>/{config.json,model.safetensors}``.

This file makes ``pretrained`` a regular package, so
``importlib.resources.files("genmnist_plugin_example.pretrained")`` finds the weights in
any kind of install (editable, wheel, zip).
"""
