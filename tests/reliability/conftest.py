from kenvfixtures import base_image, build_namespace, ca_config_map, crds, operator  # noqa: F401
