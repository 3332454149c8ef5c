"""Architecture JSONs (open_clip's config schema), one per model name.

This top-level folder is the single source; setup.cfg ships it as the package
``mobileclip2.model_configs`` (package data) in wheels and editable installs alike, and
``mobileclip2.configs.config_files`` reads it from there.
"""
