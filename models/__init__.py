"""panini_models: the Panini-Net network, its ops, checkpoints and registry.

Installed from the repository folder `models/` under the import name
`panini_models`; modules here import each other relatively.
"""
